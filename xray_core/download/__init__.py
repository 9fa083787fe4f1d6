"""Fetch the public pediatric chest X-ray datasets and unpack them in the Kermany folder layout.

A fresh machine has no data, and the real archive is 1.2 GB: the download has to survive a
dropped connection (`fetch`: it resumes with an HTTP Range request from `<name>.part`), say how
far it is (`progress`: a throttled callback, cheap enough for a Streamlit page), prove it got the
right bytes (size from the server, checksum where one is published), and never leave a
half-unpacked dataset behind (`archive`: unpacked into a hidden temporary folder beside the
target, checked by `layout`, then renamed into place).

This module holds the catalogue (`SOURCES`) and `download()`, and re-exports the public names.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import sys
import urllib.parse
from pathlib import Path

from xray_core import __version__, settings
from xray_core.download.archive import unpack_kermany, unpack_pneumoniamnist
from xray_core.download.errors import (ArchiveContentError, ChecksumError, DiskFullError,
                                       DownloadError, DownloadInProgressError, NetworkError,
                                       NotAnArchiveError, UnsafeArchiveError)
from xray_core.download.fetch import check_url, download_lock, fetch, normalise_hex
from xray_core.download.layout import CLASSES, validate_layout
from xray_core.download.progress import (DownloadProgress, ProgressCallback, Reporter, TextProgress,
                                         format_bytes, format_duration)
from xray_core.download.urls import UrlNotAllowed, UrlPolicy

__all__ = ["SOURCES", "CLASSES", "PNEUMONIAMNIST_FILES", "DEFAULT_PNEUMONIAMNIST_SIZE",
           "KERMANY_URL", "download", "target_path", "DownloadProgress", "TextProgress",
           "format_bytes", "format_duration", "DownloadError", "NetworkError",
           "NotAnArchiveError", "ChecksumError", "DiskFullError", "UnsafeArchiveError",
           "ArchiveContentError", "DownloadInProgressError", "UrlNotAllowed", "UrlPolicy",
           "catalogue_hosts", "app_url_policy"]

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


# -------------------------------------------------------------------------------- public API


def target_path(source: str = "kermany", *, dest: str | os.PathLike = "data", size: int | None = None) -> Path:
    """Where `download(source, dest, size=size)` puts the dataset root (it may not exist yet)."""
    spec = _source(source)
    dest = Path(dest).expanduser()
    if spec["sizes"] is None:
        if size is not None:
            raise ValueError(f"The {source} source has one image size; --size applies only to "
                             f"pneumoniamnist. Leave --size out.")
        return dest / "chest_xray"
    return dest / f"pneumoniamnist_{_pmnist_size(size)}"


def download(source: str = "kermany", *, dest: str | os.PathLike = "data", url: str | None = None,
             size: int | None = None, progress: ProgressCallback | None = None,
             expected_sha256: str | None = None, expected_md5: str | None = None,
             timeout: float = 60.0, keep_archive: bool = False,
             url_policy: UrlPolicy | None = None) -> Path:
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
    once unpacked unless keep_archive. url_policy: on the served dashboard, `app_url_policy()`:
    the URL, every redirect and every connected address must pass it (UrlNotAllowed). Errors are `DownloadError` subclasses whose message
    says what went wrong and what to do; in viewer mode, `settings.ViewerModeError`.
    """
    settings.refuse_writes("download")  # the page and the command line refuse first; this holds for any caller
    spec = _source(source)
    target = target_path(source, dest=dest, size=size)
    dest = target.parent
    if spec["sizes"] is None:
        filename, published_md5, default_url = spec["filename"], spec["md5"], spec["url"]
    else:
        entry = spec["sizes"][_pmnist_size(size)]
        filename, published_md5, default_url = entry["filename"], entry["md5"], entry["url"]
    url = url or default_url
    check_url(url)
    if url_policy is not None:
        url_policy.check(url)
    md5 = normalise_hex(expected_md5, 32, "MD5") or published_md5
    sha256 = normalise_hex(expected_sha256, 64, "SHA-256")
    report = Reporter(progress)

    if target.exists():
        validate_layout(target, existing=True)
        return target
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"Cannot create the folder {dest} ({exc.strerror or exc}). Choose "
                            f"another destination (--dest) that you can write to.") from exc

    archive = dest / filename
    with download_lock(dest / f".{filename}.lock"):
        digest = fetch(url, archive, md5=md5, sha256=sha256, timeout=timeout, report=report,
                       policy=url_policy)
        record = {"source": source, "url": url, "file": filename, "bytes": archive.stat().st_size,
                  "sha256": digest, "md5": md5, "downloaded": _now(),
                  "licence": spec["licence"], "citation": spec["citation"],
                  "xray_core": __version__}
        if spec["sizes"] is None:
            unpack_kermany(archive, target, record, report)
        else:
            record["size"] = _pmnist_size(size)
            unpack_pneumoniamnist(archive, target, record["size"], record, report)
        if not keep_archive:
            archive.unlink(missing_ok=True)
    return target



def catalogue_hosts() -> set[str]:
    """Every host the catalogue's published URLs name."""
    urls = [spec["url"] for spec in SOURCES.values() if spec["url"]]
    urls += [entry["url"] for spec in SOURCES.values() for entry in (spec["sizes"] or {}).values()]
    return {urllib.parse.urlsplit(u).hostname for u in urls}


def app_url_policy() -> UrlPolicy:
    """The served dashboard's rule: the catalogue's hosts plus the administrator's, public
    addresses only unless the administrator allows a network (see `urls`)."""
    return UrlPolicy.build(hosts=catalogue_hosts() | set(settings.download_hosts()),
                           private_networks=settings.download_private_networks())


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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# -------------------------------------------------------------------------------------- CLI


def _run(args: argparse.Namespace) -> int:
    spec = SOURCES[args.source]
    target = target_path(args.source, dest=args.dest, size=args.size)
    print(f"{spec['title']} ({spec['approx_size']}), licence {spec['licence']}.\n"
          f"Cite: {spec['citation']}", file=sys.stderr)
    try:
        root = download(args.source, dest=args.dest, url=args.url, size=args.size,
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
    if args.json:
        import json

        print(json.dumps({"source": args.source, "dataset": str(root), "licence": spec["licence"],
                          "citation": spec["citation"]}))
        return 0
    print(f"Dataset ready at {root}")
    print(f"Use it with: export XRAY_DATA_DIR={root}")
    return 0
