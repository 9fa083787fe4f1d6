"""What a scoring job reads: the files of a folder (recursive), a zip or a list of paths, and
their bytes (a plain path or an `archive.zip!member`)."""

from __future__ import annotations

import calendar
import csv
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from xray_core import imaging

#: Files a folder or a zip contributes: the image formats `imaging.decode` reads, plus files with
#: no suffix at all (DICOM exports often have none). Anything else (reports, spreadsheets) is
#: not a film and is left out; hidden files too.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".dic"}

#: Separator between a zip archive and a member in the `path` column: `night.zip!CR/0001.dcm`.
ZIP_SEP = "!"


class ScoreError(ValueError):
    """The job itself cannot run (bad input, an output written by another model); says what to do."""


@dataclass(frozen=True)
class Item:
    """One file to score. size/mtime_ns are -1 when the file could not be stat'ed (then `missing`)."""

    path: str
    size: int
    mtime_ns: int
    missing: str = ""

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.path, self.size, self.mtime_ns)


def _is_film_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    if not base or base.startswith("."):
        return False
    suffix = os.path.splitext(base)[1].lower()
    return suffix in IMAGE_SUFFIXES or suffix == ""


def input_kind(source: str | os.PathLike) -> str:
    """"folder", "zip" or "list"; ScoreError (a sentence) when the input does not exist."""
    source = Path(source)
    if source.is_dir():
        return "folder"
    if not source.exists():
        raise ScoreError(f"{source} does not exist. Give a folder of images, a .zip, or a text/CSV "
                         "file listing image paths.")
    if zipfile.is_zipfile(source):
        return "zip"
    return "list"


def check_paths(source: str | os.PathLike, out: str | os.PathLike) -> None:
    """Refuse, before any model loads, an input that does not exist or an output over the input."""
    source, out = Path(source), Path(out)
    input_kind(source)
    if out.exists() and source.exists() and out.resolve() == source.resolve():
        raise ScoreError(f"--out {out} is the input itself; write the scores to another file, such as "
                         "scores.csv.")


def _file_item(path: Path, shown: str | None = None) -> Item:
    shown = shown or str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        return Item(shown, -1, -1, f"{shown} does not exist. Check the path in the list and run again.")
    except OSError as exc:
        return Item(shown, -1, -1, f"{shown} cannot be read ({exc.strerror}). Check its permissions.")
    if not path.is_file():
        return Item(shown, -1, -1, f"{shown} is not a regular file (a folder?). List image files only.")
    return Item(shown, int(st.st_size), int(st.st_mtime_ns))


def _walk_folder(root: Path) -> Iterator[Item]:
    """Files under root, recursively, in a stable (sorted) order; hidden folders are skipped."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if _is_film_name(name):
                yield _file_item(Path(dirpath) / name)


def _zip_mtime_ns(info: zipfile.ZipInfo) -> int:
    return calendar.timegm((*info.date_time, 0, 0, 0)) * 1_000_000_000


def _walk_zip(archive: Path) -> Iterator[Item]:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise ScoreError(f"{archive} is not a readable zip archive ({exc}). Check the file or unpack it "
                         "and score the folder.") from None
    for info in sorted(infos, key=lambda i: i.filename):
        name = info.filename
        if name.startswith("__MACOSX/") or not _is_film_name(name):
            continue
        yield Item(f"{archive}{ZIP_SEP}{name}", int(info.file_size), _zip_mtime_ns(info))


def _walk_list(listing: Path) -> Iterator[Item]:
    """A text file (one path a line; blank lines and # comments ignored) or a CSV with a `path`
    column (else its first column). Relative paths are relative to the list's folder."""
    base = listing.parent
    try:
        text = listing.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise ScoreError(f"{listing} is neither a folder, a zip, nor a text list of paths (it is not "
                         "UTF-8 text). Give a folder of images, a .zip, or a list of paths.") from None
    if listing.suffix.lower() == ".csv":
        rows = list(csv.reader(io.StringIO(text)))
        if not rows:
            return
        header = [h.strip().lower() for h in rows[0]]
        if "path" in header:
            column, rows = header.index("path"), rows[1:]
        else:
            column = 0
        entries = [r[column].strip() for r in rows if len(r) > column and r[column].strip()]
    else:
        entries = [line.strip() for line in text.splitlines()
                   if line.strip() and not line.lstrip().startswith("#")]
    for entry in entries:
        path = Path(entry)
        if not path.is_absolute():
            path = base / path
        yield _file_item(path, str(path))


def iter_items(source: str | os.PathLike) -> Iterator[Item]:
    """The files of an input (a folder, recursively; a zip; a text or CSV list of paths), streamed."""
    source = Path(source)
    kind = input_kind(source)
    if kind == "folder":
        return _walk_folder(source)
    if kind == "zip":
        return _walk_zip(source)
    return _walk_list(source)


def count_items(source: str | os.PathLike) -> int:
    """How many files `iter_items` yields (a listing pass without keeping the list)."""
    return sum(1 for _ in iter_items(source))


def _split_zip_path(path: str) -> tuple[Path, str] | None:
    """(archive, member) for an `archive.zip!member` path, or None for a plain file path."""
    if ZIP_SEP not in path or Path(path).exists():
        return None
    archive, member = path.split(ZIP_SEP, 1)
    return Path(archive), member


_ZIPS: dict[str, zipfile.ZipFile] = {}  # open archives of this process (a worker keeps its own)


def read_item_bytes(path: str, max_bytes: int = imaging.MAX_UPLOAD_BYTES) -> bytes:
    """The raw bytes of a scored file (a plain path or an `archive.zip!member`), within max_bytes."""
    parts = _split_zip_path(path)
    if parts is None:
        p = Path(path)
        size = p.stat().st_size
        if size > max_bytes:
            raise imaging.ImageDecodeError(
                f"{path} is {size / 1024 / 1024:.1f} MB, over the {max_bytes / 1024 / 1024:g} MB limit. "
                "Export a smaller version and score that.")
        return p.read_bytes()
    archive, member = parts
    zf = _ZIPS.get(str(archive))
    if zf is None:
        zf = _ZIPS[str(archive)] = zipfile.ZipFile(archive)
    info = zf.getinfo(member)
    if info.file_size > max_bytes:
        raise imaging.ImageDecodeError(
            f"{path} is {info.file_size / 1024 / 1024:.1f} MB unpacked, over the {max_bytes / 1024 / 1024:g} MB "
            "limit. Export a smaller version and score that.")
    with zf.open(info) as fh:
        raw = fh.read(max_bytes + 1)
    if len(raw) > max_bytes:  # the header lied about the size: a zip bomb
        raise imaging.ImageDecodeError(f"{path} unpacks to more than its declared size; the archive is "
                                       "damaged or malicious. Check where it came from.")
    return raw
