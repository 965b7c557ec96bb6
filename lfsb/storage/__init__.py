"""Object stores behind one small async interface: S3 (aiobotocore) and a local directory.

Knows key names and object metadata (upstream litefs-backup's layout); knows nothing about compaction.
``S3Store`` is imported from :mod:`lfsb.storage.s3`: aiobotocore is a heavy import (about 0.4 s), which
code that only needs the local helpers does without.
"""

from .base import (
    FileInfo,
    FileMetadata,
    NotFound,
    ObjectStore,
    StorageError,
    object_key,
    parse_object_key,
)
from .local import LocalStore

__all__ = [
    "FileInfo",
    "FileMetadata",
    "LocalStore",
    "NotFound",
    "ObjectStore",
    "StorageError",
    "object_key",
    "parse_object_key",
]
