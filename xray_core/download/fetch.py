"""Bring one file to disk complete and verified: resume with HTTP Range, check size and checksum.

Bytes go to `<file>.part` (kept on a broken connection and resumed next time) and the part is
renamed into place only once its size and checksum are right. Only the standard library does
the networking (urllib).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator

from xray_core import __version__
from xray_core.download.errors import (ChecksumError, DiskFullError, DownloadError,
                                       DownloadInProgressError, NetworkError, NotAnArchiveError)
from xray_core.download.progress import Reporter, format_bytes
from xray_core.download.urls import UrlPolicy
from xray_core.fileio import atomic_write_text

CHUNK = 1 << 20
_DISK_MARGIN = 16 << 20  # leave this much free beyond what the files need
_USER_AGENT = f"xray_core/{__version__} (dataset download; Python urllib)"


def check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"Cannot download from {url!r}: only http:// and https:// addresses are "
                         f"supported. Give the full web address of the file.")


def normalise_hex(value: str | None, length: int, name: str) -> str | None:
    if value is None or value == "":
        return None
    value = value.strip().lower()
    if not re.fullmatch(rf"[0-9a-f]{{{length}}}", value):
        raise ValueError(f"{value!r} is not an {name} checksum ({length} hexadecimal digits). "
                         f"Copy the checksum exactly as published.")
    return value



def host_of(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def download_lock(path: str | os.PathLike) -> Iterator[None]:
    """One download per file and folder: two clicks on the page must not write one `.part`."""
    path = Path(path)
    for _attempt in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise DownloadInProgressError(
                    f"Another download into {path.parent} is already running (process {pid}). "
                    f"Wait for it to finish, or stop it and run this again.") from None
            path.unlink(missing_ok=True)  # left by a process that has died
    else:
        raise DownloadInProgressError(f"Could not take the lock {path}; another download seems to "
                                      f"be starting. Try again in a moment.")
    try:
        os.write(fd, str(os.getpid()).encode())
    finally:
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def disk_full_guard(where: str | os.PathLike, what: str) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into a sentence; other OSErrors pass through unchanged."""
    try:
        yield
    except DownloadError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(
                f"The disk holding {where} filled up while {what}. Free some space or choose "
                f"another destination (--dest), then run the same command again.") from exc
        raise


def check_free_space(folder: str | os.PathLike, needed: int, what: str) -> None:
    free = shutil.disk_usage(folder).free
    if needed + _DISK_MARGIN > free:
        raise DiskFullError(
            f"Not enough free disk space in {folder} for {what}: it needs about "
            f"{format_bytes(needed)} and only {format_bytes(free)} is free. Free some space or "
            f"choose another destination (--dest), then run the same command again.")


def _looks_like_html(head: bytes) -> bool:
    start = head.lstrip()[:64].lower()
    return start.startswith((b"<!doctype", b"<html", b"<head", b"<body", b"<?xml", b"<"))


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """`bytes 100-199/1000` -> (100, 1000); `bytes */1000` -> (None, 1000)."""
    if not value:
        return None, None
    m = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value)
    if not m:
        return None, None
    start = int(m.group(1)) if m.group(1) is not None else None
    total = int(m.group(2)) if m.group(2) != "*" else None
    return start, total


def _hashers(md5: str | None, sha256: str | None) -> dict[str, "hashlib._Hash"]:
    hashers = {"sha256": hashlib.sha256()}
    if md5:
        hashers["md5"] = hashlib.md5()
    return hashers


def _hash_file(path: Path, hashers: dict, report: Reporter) -> None:
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            for h in hashers.values():
                h.update(chunk)
            done += len(chunk)
            report("verify", done, total)
    report("verify", done, total, force=True)


def _mismatch(hashers: dict, md5: str | None, sha256: str | None) -> tuple[str, str, str] | None:
    """(algorithm, got, expected) for the first known checksum that differs, else None."""
    for name, key, expected in (("MD5", "md5", md5), ("SHA-256", "sha256", sha256)):
        if expected and hashers[key].hexdigest() != expected:
            return name, hashers[key].hexdigest(), expected
    return None


def _verify(path: Path, hashers: dict, md5: str | None, sha256: str | None, url: str) -> None:
    """Delete the file and raise ChecksumError when a known checksum does not match."""
    bad = _mismatch(hashers, md5, sha256)
    if bad is None:
        return
    name, got, expected = bad
    path.unlink(missing_ok=True)
    raise ChecksumError(
        f"The file downloaded from {url} has {name} {got}, but {expected} was expected, so it was "
        f"deleted. The server may hold a damaged or different version: run the command again, try "
        f"another mirror (--url), or, if your mirror deliberately serves another version, pass its "
        f"checksum (--md5/--sha256).")


def fetch(url: str, archive: str | os.PathLike, *, md5: str | None, sha256: str | None, timeout: float,
           report: Reporter, policy: UrlPolicy | None = None) -> str:
    """Bring `archive` to disk complete and verified; return its SHA-256.

    policy: when given (the dashboard), each redirect and each connected address is checked.

    Bytes go to `<archive>.part` (kept on a broken connection, resumed with Range next time)
    and the part is renamed to `archive` only once its size and checksum are right.
    """
    archive = Path(archive)
    part = archive.with_name(archive.name + ".part")
    meta_path = archive.with_name(archive.name + ".part.json")
    if archive.exists():  # a complete, verified download from an earlier call
        hashers = _hashers(md5, sha256)
        _hash_file(archive, hashers, report)
        if _mismatch(hashers, md5, sha256) is None:
            return hashers["sha256"].hexdigest()
        archive.unlink()  # damaged since it was verified: download it again below

    for _attempt in range(3):  # a restart happens when the server's file changed under us
        have = part.stat().st_size if part.exists() else 0
        meta = {}
        if have and meta_path.exists():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                meta = {}
        headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity", "Accept": "*/*"}
        if have:
            headers["Range"] = f"bytes={have}-"
            etag = meta.get("etag")
            validator = etag if etag and not etag.startswith("W/") else meta.get("last_modified")
            if validator:
                headers["If-Range"] = validator
        request = urllib.request.Request(url, headers=headers)
        try:
            if policy is None:
                response = urllib.request.urlopen(request, timeout=timeout)
            else:
                response = policy.opener().open(request, timeout=timeout)
        except DownloadError:
            raise  # a refused redirect: already a sentence
        except urllib.error.HTTPError as exc:
            with exc:
                if exc.code == 416 and have:
                    _start, total = _parse_content_range(exc.headers.get("Content-Range"))
                    if total == have:  # the part is already complete
                        break
                    part.unlink(missing_ok=True)
                    meta_path.unlink(missing_ok=True)
                    continue
                raise NetworkError(
                    f"The server {host_of(url)} answered HTTP {exc.code} ({exc.reason}) for {url}. The "
                    f"link may have moved or need a login: open it in a browser to check, or pass "
                    f"--url with a working mirror.") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, DownloadError):
                raise reason from None  # a refused address, wrapped by urllib
            kept = (f" The {format_bytes(have)} already downloaded are kept in {part} and the next "
                    f"run resumes from there." if have else "")
            raise NetworkError(
                f"Could not reach {host_of(url)} ({reason}). Check that this computer is online (and "
                f"any proxy settings), or pass --url with a mirror you can reach, then run the "
                f"command again.{kept}") from exc
        with response:
            restart = _receive(response, url, part, meta_path, meta, have, report=report)
        if restart:
            continue
        break
    else:
        raise NetworkError(f"The server {host_of(url)} kept changing the file while it was being "
                           f"downloaded. Try again later or use another mirror (--url).")

    hashers = _hashers(md5, sha256)
    _hash_file(part, hashers, report)
    meta_path.unlink(missing_ok=True)  # complete: nothing left to resume, whatever the checksum
    _verify(part, hashers, md5, sha256, url)
    os.replace(part, archive)
    return hashers["sha256"].hexdigest()


def _receive(response, url: str, part: Path, meta_path: Path, meta: dict, have: int, *,
             report: Reporter) -> bool:
    """Stream one HTTP response into the part file; True when the download must start over."""
    headers = response.headers
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type in ("text/html", "application/xhtml+xml"):
        raise NotAnArchiveError(
            f"The server {host_of(url)} answered with a web page ({content_type}) instead of the "
            f"file. The link probably leads to a landing or login page, or has expired: open {url} "
            f"in a browser to check, or pass --url with a direct link to the file.")
    status = response.status
    if status == 206:
        start, total = _parse_content_range(headers.get("Content-Range"))
        if start != have or (meta.get("total") and total and meta["total"] != total):
            part.unlink(missing_ok=True)  # not the range asked for, or another file: start over
            meta_path.unlink(missing_ok=True)
            return True
    elif status == 200:
        length = headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        have = 0  # the server ignored Range (or the file changed): start over from byte 0
        meta = {"url": url, "total": total, "etag": headers.get("ETag"),
                "last_modified": headers.get("Last-Modified")}
        atomic_write_text(meta_path, json.dumps(meta))  # a kill mid-write leaves the old file or none
    else:
        raise NetworkError(f"The server {host_of(url)} answered HTTP {status} where the file was "
                           f"expected. Try again later or pass --url with another mirror.")

    if total is not None:  # room for the rest of the file and for unpacking it (about its size)
        check_free_space(part.parent, 2 * total - have,
                          f"downloading {format_bytes(total)} from {host_of(url)} and unpacking it")
    done = have
    broken: BaseException | None = None
    read = getattr(response, "read1", response.read)
    with disk_full_guard(part.parent, "downloading"):
        with open(part, "r+b" if have else "wb") as out:
            if have:
                out.seek(have)
                out.truncate()
            first = have == 0
            report("download", done, total, force=True)
            while True:
                try:
                    chunk = read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    broken = exc
                    break
                if not chunk:
                    break
                if first:
                    first = False
                    if not chunk.startswith(b"PK"[:len(chunk)]):
                        what = "a web page" if _looks_like_html(chunk) else "something else"
                        out.close()
                        part.unlink(missing_ok=True)
                        meta_path.unlink(missing_ok=True)
                        raise NotAnArchiveError(
                            f"The server {host_of(url)} sent {what} instead of a zip file (it starts "
                            f"with {chunk[:16]!r}). The link probably leads to a landing or login "
                            f"page: open {url} in a browser to check, or pass --url with a direct "
                            f"link to the file.")
                out.write(chunk)
                done += len(chunk)
                report("download", done, total)
            out.flush()
            os.fsync(out.fileno())
    report("download", done, total, force=True)
    if broken is not None or (total is not None and done < total):
        shown = f"{format_bytes(done)} of {format_bytes(total)}" if total else format_bytes(done)
        why = f" ({broken})" if broken is not None and str(broken) else ""
        raise NetworkError(
            f"The connection to {host_of(url)} broke after {shown}{why}. Run the same command again: "
            f"the download resumes from where it stopped (kept in {part}).")
    if total is not None and done > total:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        raise ChecksumError(f"The server {host_of(url)} sent {format_bytes(done)} but announced "
                            f"{format_bytes(total)}, so the file was deleted. Run the command again "
                            f"or use another mirror (--url).")
    return False
