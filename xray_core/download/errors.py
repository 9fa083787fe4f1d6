"""The download's errors: each message says what went wrong and what to do."""

from __future__ import annotations


class DownloadError(ValueError, OSError):
    """A download or unpack failed in a way the user can act on; the message says how.

    It is a ValueError (the CLI prints library ValueErrors as one sentence) and an OSError
    (callers that treat network and disk trouble as OSError still catch it).
    """


class NetworkError(DownloadError):
    """The server could not be reached, refused the request, or the connection broke."""


class NotAnArchiveError(DownloadError):
    """The server answered something else than the file (typically an HTML page)."""


class ChecksumError(DownloadError):
    """The downloaded bytes are not the published file (wrong size or checksum); deleted."""


class DiskFullError(DownloadError):
    """Not enough free disk space for the download or for unpacking it."""


class UnsafeArchiveError(DownloadError):
    """A zip entry would be written outside the destination (`../`, absolute path, link)."""


class ArchiveContentError(DownloadError):
    """The archive is corrupt or does not hold the expected dataset layout or arrays."""


class DownloadInProgressError(DownloadError):
    """Another download into the same folder is running."""

