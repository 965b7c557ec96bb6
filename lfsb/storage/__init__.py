"""Object stores behind one small async interface: S3 (aiobotocore) and a local directory.

Knows key names and object metadata (upstream litefs-backup's layout); knows nothing about compaction.
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
from .s3 import S3Store

__all__ = [
    "FileInfo",
    "FileMetadata",
    "LocalStore",
    "NotFound",
    "ObjectStore",
    "S3Store",
    "StorageError",
    "object_key",
    "parse_object_key",
]
