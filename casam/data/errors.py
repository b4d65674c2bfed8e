"""The two ways data files fail: absent (say how to get them) or unreadable (say which file)."""

from __future__ import annotations

__all__ = ["DataNotFoundError", "DataFormatError"]


class DataNotFoundError(FileNotFoundError):
    """Data files are not where casam looked; the message names the folders and how to get the files."""


class DataFormatError(ValueError):
    """A data file exists but is truncated, corrupt or not in the expected format; the message names it."""
