"""Fetch the public pediatric chest X-ray datasets and unpack them in the Kermany folder layout.

A fresh machine has no data, and the real archive is 1.2 GB: the download has to survive a
dropped connection (it resumes with an HTTP Range request from `<name>.part`), say how far it
is (a throttled progress callback, cheap enough for a Streamlit page), prove it got the right
bytes (size from the server, checksum where one is published), and never leave a
half-unpacked dataset behind (it unpacks into a hidden temporary folder beside the target,
checks the layout, then renames the folder into place).

Only the standard library does the networking (urllib), so nothing new is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import errno
import hashlib
import http.client
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator, NamedTuple

from xray_core import __version__
from xray_core.runs import atomic_write_text

CLASSES = ("NORMAL", "PNEUMONIA")
KERMANY_URL = ("https://data.mendeley.com/public-files/datasets/rscbjbr9sj/files/"
               "f12eaf6d-6023-432f-acc9-80c9d7393433/file_downloaded")
_ZENODO = "https://zenodo.org/records/10519652/files/"

# Size in pixels -> (file name, MD5), as published in the `medmnist` package's INFO dict
# (medmnist/info.py, "pneumoniamnist": url / url_64 / url_128 / url_224 and MD5 / MD5_<size>).
PNEUMONIAMNIST_FILES = {
    28: ("pneumoniamnist.npz", "28209eda62fecd6e6a2d98b1501bb15f"),
    64: ("pneumoniamnist_64.npz", "8f4eceb4ccffa70c672198ea285246c6"),
    128: ("pneumoniamnist_128.npz", "05b46931834c231683c68f40c47b2971"),
    224: ("pneumoniamnist_224.npz", "d6a3c71de1b945ea11211b03746c1fe1"),
}
# The seed's models read 100x100 images; 128 px is the smallest published size at or above it.
DEFAULT_PNEUMONIAMNIST_SIZE = 128

_KERMANY_CITATION = (
    "Kermany, D., Zhang, K., Goldbaum, M. (2018). Large Dataset of Labeled Optical Coherence "
    "Tomography (OCT) and Chest X-Ray Images. Mendeley Data, V3. doi:10.17632/rscbjbr9sj.3. "
    "See also Kermany, D. S. et al. (2018). Identifying Medical Diagnoses and Treatable "
    "Diseases by Image-Based Deep Learning. Cell 172(5), 1122-1131. "
    "doi:10.1016/j.cell.2018.02.010")

SOURCES: dict[str, dict] = {
    "kermany": {
        "name": "kermany",
        "title": "Kermany et al. (2018) pediatric chest X-rays, ChestXRay2017.zip",
        "description": (
            "5,856 pediatric chest radiographs (JPEG, original resolution) from Guangzhou Women "
            "and Children's Medical Center, labelled NORMAL or PNEUMONIA (bacterial or viral in "
            "the file name), in the official train/test split. The dataset this project was "
            "built on."),
        "approx_size": "1.2 GB",
        "approx_bytes": 1_200_000_000,
        "licence": "CC BY 4.0",
        "citation": _KERMANY_CITATION,
        "homepage": "https://data.mendeley.com/datasets/rscbjbr9sj/3",
        "url": KERMANY_URL,
        "filename": "ChestXRay2017.zip",
        "md5": None,  # Mendeley publishes no checksum for the file; size is still checked
        "sizes": None,
    },
    "pneumoniamnist": {
        "name": "pneumoniamnist",
        "title": "PneumoniaMNIST (MedMNIST v2), 28/64/128/224 px",
        "description": (
            "The same 5,856 radiographs, centre-cropped and resized to squares of 28, 64, 128 "
            "or 224 px, with MedMNIST's official train/val/test split (4,708 / 524 / 624). "
            "Small and quick to fetch; it carries no patient ids, so each image counts as its "
            "own patient."),
        "approx_size": "4 MB (28 px) to about 0.3 GB (224 px)",
        "approx_bytes": 300_000_000,
        "licence": "CC BY 4.0",
        "citation": (
            "Yang, J., Shi, R., Wei, D., Liu, Z., Zhao, L., Ke, B., Pfister, H., Ni, B. (2023). "
            "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical image "
            "classification. Scientific Data 10, 41. doi:10.1038/s41597-022-01721-8. Source "
            "images: " + _KERMANY_CITATION),
        "homepage": "https://medmnist.com/",
        "url": None,  # one per size, see "sizes"
        "filename": None,
        "md5": None,
        "sizes": {size: {"url": _ZENODO + name + "?download=1", "filename": name, "md5": md5}
                  for size, (name, md5) in PNEUMONIAMNIST_FILES.items()},
    },
}

_CHUNK = 1 << 20
_DISK_MARGIN = 16 << 20  # leave this much free beyond what the files need
_USER_AGENT = f"xray_core/{__version__} (dataset download; Python urllib)"
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


# ------------------------------------------------------------------------------------- errors


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


# ----------------------------------------------------------------------------------- progress


class DownloadProgress(NamedTuple):
    """One progress report: what is happening, how far, how fast, and how long is left.

    phase: "download" (bytes), "verify" (bytes hashed), "unpack" (bytes or images written).
    total, rate (units per second) and eta (seconds) are None while unknown.
    """

    phase: str
    done: int
    total: int | None
    rate: float | None
    eta: float | None
    unit: str = "bytes"

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)

    def describe(self) -> str:
        """One line for a progress bar: 'Downloading 540 MB of 1.2 GB (45%), 12 MB/s, 52 s left'."""
        verb = {"download": "Downloading", "verify": "Checking", "unpack": "Unpacking"}.get(
            self.phase, self.phase.capitalize())
        fmt = format_bytes if self.unit == "bytes" else (lambda n: f"{int(n):,} {self.unit}")
        text = f"{verb} {fmt(self.done)}"
        if self.total:
            text += f" of {fmt(self.total)} ({100 * self.fraction:.0f}%)"
        if self.rate:
            text += f", {fmt(self.rate)}/s"
        if self.eta is not None:
            text += f", {format_duration(self.eta)} left"
        return text


ProgressCallback = Callable[[DownloadProgress], None]


def format_bytes(n: float) -> str:
    """Human-readable size in decimal units (what browsers and file managers show)."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class _Reporter:
    """Throttles progress calls (a Streamlit rerender per chunk would slow the download)."""

    def __init__(self, callback: ProgressCallback | None, interval: float = 0.25):
        self.callback = callback
        self.interval = interval
        self.phase: str | None = None
        self.t0 = self.last = 0.0
        self.start_done = 0

    def __call__(self, phase: str, done: int, total: int | None, *, unit: str = "bytes",
                 force: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if phase != self.phase:
            self.phase, self.t0, self.start_done, self.last = phase, now, done, 0.0
            force = True
        if not force and now - self.last < self.interval:
            return
        self.last = now
        elapsed = now - self.t0
        rate = (done - self.start_done) / elapsed if elapsed > 0.05 else None
        eta = None
        if rate and total is not None and total >= done:
            eta = (total - done) / rate
        self.callback(DownloadProgress(phase, done, total, rate, eta, unit))


# -------------------------------------------------------------------------------- public API


def target_path(source: str = "kermany", dest: str | Path = "data", size: int | None = None) -> Path:
    """Where `download(source, dest, size=size)` puts the dataset root (it may not exist yet)."""
    spec = _source(source)
    dest = Path(dest).expanduser()
    if spec["sizes"] is None:
        if size is not None:
            raise ValueError(f"The {source} source has one image size; --size applies only to "
                             f"pneumoniamnist. Leave --size out.")
        return dest / "chest_xray"
    return dest / f"pneumoniamnist_{_pmnist_size(size)}"


def download(source: str = "kermany", dest: str | Path = "data", *, url: str | None = None,
             size: int | None = None, progress: ProgressCallback | None = None,
             expected_sha256: str | None = None, expected_md5: str | None = None,
             timeout: float = 60.0, keep_archive: bool = False) -> Path:
    """Download, verify and unpack a dataset; return its root (ready for `data.find_dataset`).

    source: "kermany" (ChestXRay2017.zip -> `<dest>/chest_xray/`) or "pneumoniamnist" (an npz
    at `size` px -> `<dest>/pneumoniamnist_<size>/`), see `SOURCES`.
    url: a mirror to fetch from instead of the published address; the published checksum
    still applies unless expected_md5/expected_sha256 are given.
    progress: called with one `DownloadProgress` (phase, done, total, rate, eta, unit; with
    `.fraction` and `.describe()` for a bar's text) at most every 0.25 s and at each phase's
    end.
    An existing dataset at the target is returned without downloading. An interrupted
    download leaves `<dest>/<file>.part`, and the next call resumes it. The archive is deleted
    once unpacked unless keep_archive. Errors are `DownloadError` subclasses whose message
    says what went wrong and what to do.
    """
    spec = _source(source)
    target = target_path(source, dest, size)
    dest = target.parent
    if spec["sizes"] is None:
        filename, published_md5, default_url = spec["filename"], spec["md5"], spec["url"]
    else:
        entry = spec["sizes"][_pmnist_size(size)]
        filename, published_md5, default_url = entry["filename"], entry["md5"], entry["url"]
    url = url or default_url
    _check_url(url)
    md5 = _normalise_hex(expected_md5, 32, "MD5") or published_md5
    sha256 = _normalise_hex(expected_sha256, 64, "SHA-256")
    report = _Reporter(progress)

    if target.exists():
        _validate_layout(target, existing=True)
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"Cannot create the folder {dest} ({exc.strerror or exc}). Choose "
                            f"another destination (--dest) that you can write to.") from exc

    archive = dest / filename
    with _lock(dest / f".{filename}.lock"):
        digest = _fetch(url, archive, md5=md5, sha256=sha256, timeout=timeout, report=report)
        record = {"source": source, "url": url, "file": filename, "bytes": archive.stat().st_size,
                  "sha256": digest, "md5": md5, "downloaded": _now(),
                  "licence": spec["licence"], "citation": spec["citation"],
                  "xray_core": __version__}
        if spec["sizes"] is None:
            _unpack_kermany(archive, target, record, report)
        else:
            record["size"] = _pmnist_size(size)
            _unpack_pneumoniamnist(archive, target, record["size"], record, report)
        if not keep_archive:
            archive.unlink(missing_ok=True)
    return target


# ----------------------------------------------------------------------------------- helpers


def _source(name: str) -> dict:
    if name not in SOURCES:
        raise ValueError(f"Unknown dataset source {name!r}. Choose one of: {', '.join(SOURCES)}.")
    return SOURCES[name]


def _pmnist_size(size: int | None) -> int:
    if size is None:
        return DEFAULT_PNEUMONIAMNIST_SIZE
    if size not in PNEUMONIAMNIST_FILES:
        raise ValueError(f"PneumoniaMNIST is published at {', '.join(map(str, PNEUMONIAMNIST_FILES))} "
                         f"px, not {size}. Pick one of those sizes.")
    return int(size)


def _check_url(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"Cannot download from {url!r}: only http:// and https:// addresses are "
                         f"supported. Give the full web address of the file.")


def _normalise_hex(value: str | None, length: int, name: str) -> str | None:
    if value is None or value == "":
        return None
    value = value.strip().lower()
    if not re.fullmatch(rf"[0-9a-f]{{{length}}}", value):
        raise ValueError(f"{value!r} is not an {name} checksum ({length} hexadecimal digits). "
                         f"Copy the checksum exactly as published.")
    return value


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _host(url: str) -> str:
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
def _lock(path: Path) -> Iterator[None]:
    """One download per file and folder: two clicks on the page must not write one `.part`."""
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
def _disk_full_guard(where: Path, what: str) -> Iterator[None]:
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


def _check_free_space(folder: Path, needed: int, what: str) -> None:
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


def _hash_file(path: Path, hashers: dict, report: _Reporter) -> None:
    total = path.stat().st_size
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
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


def _fetch(url: str, archive: Path, *, md5: str | None, sha256: str | None, timeout: float,
           report: _Reporter) -> str:
    """Bring `archive` to disk complete and verified; return its SHA-256.

    Bytes go to `<archive>.part` (kept on a broken connection, resumed with Range next time)
    and the part is renamed to `archive` only once its size and checksum are right.
    """
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
            response = urllib.request.urlopen(request, timeout=timeout)
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
                    f"The server {_host(url)} answered HTTP {exc.code} ({exc.reason}) for {url}. The "
                    f"link may have moved or need a login: open it in a browser to check, or pass "
                    f"--url with a working mirror.") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            kept = (f" The {format_bytes(have)} already downloaded are kept in {part} and the next "
                    f"run resumes from there." if have else "")
            raise NetworkError(
                f"Could not reach {_host(url)} ({reason}). Check that this computer is online (and "
                f"any proxy settings), or pass --url with a mirror you can reach, then run the "
                f"command again.{kept}") from exc
        with response:
            restart = _receive(response, url, part, meta_path, meta, have, report=report)
        if restart:
            continue
        break
    else:
        raise NetworkError(f"The server {_host(url)} kept changing the file while it was being "
                           f"downloaded. Try again later or use another mirror (--url).")

    hashers = _hashers(md5, sha256)
    _hash_file(part, hashers, report)
    meta_path.unlink(missing_ok=True)  # complete: nothing left to resume, whatever the checksum
    _verify(part, hashers, md5, sha256, url)
    os.replace(part, archive)
    return hashers["sha256"].hexdigest()


def _receive(response, url: str, part: Path, meta_path: Path, meta: dict, have: int, *,
             report: _Reporter) -> bool:
    """Stream one HTTP response into the part file; True when the download must start over."""
    headers = response.headers
    content_type = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type in ("text/html", "application/xhtml+xml"):
        raise NotAnArchiveError(
            f"The server {_host(url)} answered with a web page ({content_type}) instead of the "
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
        raise NetworkError(f"The server {_host(url)} answered HTTP {status} where the file was "
                           f"expected. Try again later or pass --url with another mirror.")

    if total is not None:  # room for the rest of the file and for unpacking it (about its size)
        _check_free_space(part.parent, 2 * total - have,
                          f"downloading {format_bytes(total)} from {_host(url)} and unpacking it")
    done = have
    broken: BaseException | None = None
    read = getattr(response, "read1", response.read)
    with _disk_full_guard(part.parent, "downloading"):
        with open(part, "r+b" if have else "wb") as out:
            if have:
                out.seek(have)
                out.truncate()
            first = have == 0
            report("download", done, total, force=True)
            while True:
                try:
                    chunk = read(_CHUNK)
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
                            f"The server {_host(url)} sent {what} instead of a zip file (it starts "
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
            f"The connection to {_host(url)} broke after {shown}{why}. Run the same command again: "
            f"the download resumes from where it stopped (kept in {part}).")
    if total is not None and done > total:
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        raise ChecksumError(f"The server {_host(url)} sent {format_bytes(done)} but announced "
                            f"{format_bytes(total)}, so the file was deleted. Run the command again "
                            f"or use another mirror (--url).")
    return False


# ------------------------------------------------------------------------------------ unpacking


def _safe_member(name: str) -> PurePosixPath:
    """The entry's path relative to the destination, or UnsafeArchiveError if it escapes."""
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise UnsafeArchiveError(
            f"The archive holds an entry with an absolute path ({name!r}), which would be written "
            f"outside the destination; nothing was unpacked. The file is not the expected dataset: "
            f"check where it came from.")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(
            f"The archive holds an entry that climbs out of the destination ({name!r}); nothing "
            f"was unpacked. The file is not the expected dataset: check where it came from.")
    return PurePosixPath(*parts) if parts else PurePosixPath()


def _is_junk(rel: PurePosixPath) -> bool:
    """macOS resource forks and folder metadata that the real zip carries."""
    return (any(p == "__MACOSX" for p in rel.parts) or rel.name in _JUNK_NAMES
            or rel.name.startswith("._"))


def _plan_zip(zf: zipfile.ZipFile) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """Every entry to extract, checked before a single byte is written."""
    plan = []
    for info in zf.infolist():
        rel = _safe_member(info.filename)
        if (info.external_attr >> 16) & 0o170000 == 0o120000:
            raise UnsafeArchiveError(
                f"The archive holds a symbolic link ({info.filename!r}); links could point outside "
                f"the destination, so nothing was unpacked. The file is not the expected dataset.")
        if not rel.parts or _is_junk(rel):
            continue
        plan.append((info, rel))
    return plan


def _layout_root(folder: Path, depth: int = 3) -> Path | None:
    """The shallowest folder holding train/{NORMAL,PNEUMONIA} (any case), or None."""
    level = [folder]
    for _ in range(depth + 1):
        nxt = []
        for d in level:
            subdirs = {p.name.lower(): p for p in d.iterdir() if p.is_dir()
                       and not p.name.startswith(".") and p.name != "__MACOSX"}
            train = subdirs.get("train")
            if train is not None:
                classes = {p.name.lower() for p in train.iterdir() if p.is_dir()}
                if all(c.lower() in classes for c in CLASSES):
                    return d
            nxt.extend(sorted(subdirs.values()))
        level = nxt
    return None


def _validate_layout(root: Path, existing: bool = False) -> None:
    """Check with the project's own reader (xray_core.data) that `root` is a usable dataset."""
    from xray_core.data import find_dataset  # pandas: imported only once a dataset is on disk

    problem = None
    try:
        found = find_dataset(root)
        if found != root.resolve():
            problem = f"the dataset was found at {found} instead"
    except ValueError as exc:
        problem = str(exc)
    if problem is None:
        train = next(p for p in root.iterdir() if p.name.lower() == "train")
        if not any(f.is_file() for c in train.iterdir() if c.is_dir() for f in c.iterdir()):
            problem = f"{train} holds no images"
    if problem is None:
        return
    if existing:
        raise ArchiveContentError(
            f"{root} already exists but is not a complete dataset ({problem}). Remove or rename "
            f"that folder, or choose another destination (--dest), then download again.")
    raise ArchiveContentError(f"The downloaded archive does not hold the expected dataset "
                              f"({problem}).")


def _finish(tmp: Path, root: Path, target: Path, record: dict) -> None:
    """Validate, record provenance, and rename the complete folder into place."""
    _validate_layout(root)
    (root / "download.json").write_text(json.dumps(record, indent=2) + "\n")
    if target.exists():
        raise DownloadError(f"{target} appeared while unpacking (another download?). Remove it "
                            f"or choose another destination (--dest), then run again.")
    os.rename(root, target)


def _unpack_kermany(archive: Path, target: Path, record: dict, report: _Reporter) -> None:
    dest = target.parent
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        archive.unlink(missing_ok=True)
        raise ArchiveContentError(f"{archive.name} is not a readable zip file ({exc}), so it was "
                                  f"deleted. Run the command again to download it afresh.") from exc
    with zf:
        try:
            plan = _plan_zip(zf)
        except UnsafeArchiveError:
            zf.close()
            archive.unlink(missing_ok=True)
            raise
        total = sum(info.file_size for info, _ in plan)
        _check_free_space(dest, total, f"unpacking {archive.name}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpacking-", dir=dest))
        try:
            done = 0
            report("unpack", 0, total, force=True)
            with _disk_full_guard(dest, f"unpacking {archive.name}"):
                for info, rel in plan:
                    out = tmp.joinpath(*rel.parts)
                    if info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        while chunk := src.read(_CHUNK):
                            dst.write(chunk)
                            done += len(chunk)
                            report("unpack", done, total)
            report("unpack", done, total, force=True)
            root = _layout_root(tmp)
            if root is None:
                raise ArchiveContentError(
                    f"{archive.name} does not hold the Kermany layout (train/NORMAL and "
                    f"train/PNEUMONIA folders). Check that --url points at ChestXRay2017.zip.")
            _finish(tmp, root, target, record)
        except zipfile.BadZipFile as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            archive.unlink(missing_ok=True)
            raise ArchiveContentError(f"{archive.name} is damaged ({exc}), so it was deleted. Run "
                                      f"the command again to download it afresh.") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-unpacked dataset
            raise
        if tmp.exists():  # the dataset was a sub-folder (chest_xray/); the rest is junk
            shutil.rmtree(tmp)


def _unpack_pneumoniamnist(archive: Path, target: Path, size: int, record: dict,
                           report: _Reporter) -> None:
    """Write the npz's images as PNGs in the Kermany layout, keeping MedMNIST's split.

    PneumoniaMNIST has no patient ids, so each image is its own patient: files are named
    `pmnist-<split>-<index>.png`, which `xray_core.data.parse_filename` reads as a patient of
    its own (the stem), so a patient-level split never joins two images.
    """
    import numpy as np
    from PIL import Image

    dest = target.parent
    try:
        data = np.load(archive, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        archive.unlink(missing_ok=True)
        raise ArchiveContentError(f"{archive.name} is not a readable npz file ({exc}), so it was "
                                  f"deleted. Run the command again to download it afresh.") from exc
    with data:
        splits = {}
        for split in ("train", "val", "test"):
            keys = (f"{split}_images", f"{split}_labels")
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise ArchiveContentError(
                    f"{archive.name} is not a PneumoniaMNIST file: it lacks {', '.join(missing)} "
                    f"(it holds {', '.join(data.files) or 'nothing'}). Check --url.")
            images, labels = data[keys[0]], data[keys[1]].reshape(-1)
            if images.ndim == 4 and images.shape[-1] == 1:
                images = images[..., 0]
            if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
                raise ArchiveContentError(
                    f"{archive.name}: {keys[0]} has shape {images.shape} and type {images.dtype} "
                    f"for {len(labels)} labels; expected (N, H, W) uint8 gray images. Check --url.")
            if images.shape[1:] != (size, size):
                raise ArchiveContentError(
                    f"{archive.name} holds {images.shape[2]}x{images.shape[1]} px images, but "
                    f"{size} px was asked for. Pass the matching --size for this file.")
            if not set(np.unique(labels).tolist()) <= {0, 1}:
                raise ArchiveContentError(
                    f"{archive.name}: {keys[1]} holds values other than 0 (normal) and 1 "
                    f"(pneumonia). This is not PneumoniaMNIST; check --url.")
            splits[split] = (images, labels)
    total = sum(len(labels) for _, labels in splits.values())
    _check_free_space(dest, sum(im.nbytes for im, _ in splits.values()), "writing the PNG images")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpacking-", dir=dest))
    try:
        done = 0
        report("unpack", 0, total, unit="images", force=True)
        with _disk_full_guard(dest, "writing the PNG images"):
            for split, (images, labels) in splits.items():
                for class_name in CLASSES:
                    (tmp / split / class_name).mkdir(parents=True)
                for i, (img, label) in enumerate(zip(images, labels)):
                    out = tmp / split / CLASSES[int(label)] / f"pmnist-{split}-{i:05d}.png"
                    Image.fromarray(img).save(out, format="PNG")
                    done += 1
                    report("unpack", done, total, unit="images")
        report("unpack", done, total, unit="images", force=True)
        _finish(tmp, tmp, target, record)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a half-written dataset
        raise


# -------------------------------------------------------------------------------------- CLI


class TextProgress:
    """A one-line progress bar on a stream: redrawn in place on a terminal, sparse lines otherwise."""

    def __init__(self, stream=None, width: int = 28):
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_line = 0.0
        self.phase: str | None = None

    def __call__(self, p: DownloadProgress) -> None:
        fraction = p.fraction
        bar = ""
        if fraction is not None:
            filled = int(round(self.width * fraction))
            bar = "[" + "#" * filled + "." * (self.width - filled) + "] "
        line = bar + p.describe()
        finished = p.total is not None and p.done >= p.total
        if self.tty:
            self.stream.write("\r" + line.ljust(100))
            if finished:
                self.stream.write("\n")
        else:
            now = time.monotonic()
            if p.phase != self.phase or finished or now - self.last_line >= 5:
                self.stream.write(line + "\n")
                self.last_line = now
        self.phase = p.phase
        self.stream.flush()


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "download",
        help="download a public dataset and unpack it in the Kermany folder layout",
        description=("Download, verify and unpack a public pediatric chest X-ray dataset. "
                     "Interrupted downloads resume when the same command is run again. "
                     "Sources: " + "; ".join(f"{k}: {v['title']} ({v['approx_size']}, {v['licence']})"
                                              for k, v in SOURCES.items()) + "."),
    )
    parser.add_argument("--source", choices=list(SOURCES), default="kermany",
                        help="which dataset (default: kermany, the original 1.2 GB archive)")
    parser.add_argument("--dest", type=Path, default=Path("data"),
                        help="folder to download into (default: ./data)")
    parser.add_argument("--url", help="fetch from this address instead (e.g. an institutional mirror)")
    parser.add_argument("--size", type=int, choices=sorted(PNEUMONIAMNIST_FILES),
                        help=f"pneumoniamnist image size in px (default {DEFAULT_PNEUMONIAMNIST_SIZE})")
    parser.add_argument("--md5", help="expected MD5 of the file (overrides the published one)")
    parser.add_argument("--sha256", help="expected SHA-256 of the file")
    parser.add_argument("--keep-archive", action="store_true",
                        help="keep the downloaded zip/npz after unpacking")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds to wait for the server before giving up (default 60)")
    parser.set_defaults(func=_run)
    return parser


def _run(args: argparse.Namespace) -> int:
    spec = SOURCES[args.source]
    target = target_path(args.source, args.dest, args.size)
    print(f"{spec['title']} ({spec['approx_size']}), licence {spec['licence']}.\n"
          f"Cite: {spec['citation']}", file=sys.stderr)
    try:
        root = download(args.source, args.dest, url=args.url, size=args.size,
                        progress=TextProgress(), expected_md5=args.md5,
                        expected_sha256=args.sha256, timeout=args.timeout,
                        keep_archive=args.keep_archive)
    except KeyboardInterrupt:
        print("\nStopped. What was downloaded is kept: run the same command again to resume.",
              file=sys.stderr)
        raise
    if root != target:
        raise DownloadError(f"The dataset landed at {root} instead of {target}.")
    root = root.resolve()
    print(f"Dataset ready at {root}")
    print(f"Use it with: export XRAY_DATA_DIR={root}")
    return 0
