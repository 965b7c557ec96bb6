-- Names are ASCII, so lower() folds case exactly. A new database whose name, or whose cluster's name,
-- differs only in case from an existing one is refused (on a case-insensitive file system the two
-- would share a directory); this index answers that check without a scan.
CREATE INDEX databases_folded_names ON databases (lower(cluster), lower(name));
