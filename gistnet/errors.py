"""Exceptions the library raises. Callers (CLI, API, workers) map them to exit codes,
HTTP statuses and job errors; every message says what was wrong and what to do."""


class GistNetError(Exception):
    """Base class: an error a user can act on (bad config, missing file, wrong shape)."""


class ConfigError(GistNetError, ValueError):
    """A config or request value is invalid."""


class TeacherLoadError(GistNetError):
    """The teacher model or tokenizer could not be loaded."""


class ShardError(GistNetError):
    """An Arrow shard is missing, unfinished or has the wrong schema."""


class DeviceError(GistNetError):
    """The requested device does not exist on this machine."""


class Cancelled(GistNetError):
    """The caller's cancel check asked the work to stop."""


class StorageError(GistNetError):
    """An artifact location cannot be read or written: a missing bucket or file, refused
    credentials, an unreachable object store."""


class BoundError(ConfigError):
    """An input asks for more work than a bound allows (a line too long, a file that
    expands too far, a model too large); the message names the bound and how to raise it."""


class DiskFullError(StorageError):
    """A write failed because its disk (or quota) is full."""
