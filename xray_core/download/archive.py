"""Archive safety and unpacking: every entry is checked before a byte is written, and the
dataset appears in place only once complete (unpacked into a hidden temporary folder beside the
target, checked, then renamed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from xray_core.download.errors import ArchiveContentError, DownloadError, UnsafeArchiveError
from xray_core.download.fetch import CHUNK, check_free_space, disk_full_guard
from xray_core.download.layout import CLASSES, layout_root, validate_layout
from xray_core.download.progress import Reporter

_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


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



def _finish(tmp: Path, root: Path, target: Path, record: dict) -> None:
    """Validate, record provenance, and rename the complete folder into place."""
    validate_layout(root)
    (root / "download.json").write_text(json.dumps(record, indent=2) + "\n")
    if target.exists():
        raise DownloadError(f"{target} appeared while unpacking (another download?). Remove it "
                            f"or choose another destination (--dest), then run again.")
    os.rename(root, target)


def unpack_kermany(archive: str | os.PathLike, target: str | os.PathLike, record: dict, report: Reporter) -> None:
    archive, target = Path(archive), Path(target)
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
        check_free_space(dest, total, f"unpacking {archive.name}")
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpacking-", dir=dest))
        try:
            done = 0
            report("unpack", 0, total, force=True)
            with disk_full_guard(dest, f"unpacking {archive.name}"):
                for info, rel in plan:
                    out = tmp.joinpath(*rel.parts)
                    if info.is_dir():
                        out.mkdir(parents=True, exist_ok=True)
                        continue
                    out.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(out, "wb") as dst:
                        while chunk := src.read(CHUNK):
                            dst.write(chunk)
                            done += len(chunk)
                            report("unpack", done, total)
            report("unpack", done, total, force=True)
            root = layout_root(tmp)
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


def unpack_pneumoniamnist(archive: str | os.PathLike, target: str | os.PathLike, size: int, record: dict,
                           report: Reporter) -> None:
    """Write the npz's images as PNGs in the Kermany layout, keeping MedMNIST's split.

    PneumoniaMNIST has no patient ids, so each image is its own patient: files are named
    `pmnist-<split>-<index>.png`, which `xray_core.data.parse_filename` reads as a patient of
    its own (the stem), so a patient-level split never joins two images.
    """
    import numpy as np
    from PIL import Image

    archive, target = Path(archive), Path(target)
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
    check_free_space(dest, sum(im.nbytes for im, _ in splits.values()), "writing the PNG images")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.unpacking-", dir=dest))
    try:
        done = 0
        report("unpack", 0, total, unit="images", force=True)
        with disk_full_guard(dest, "writing the PNG images"):
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
