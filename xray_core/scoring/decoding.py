"""Reading, hashing and decoding files to the model's input size, in parallel worker processes.

Each worker turns a chunk of items into a `DecodedChunk`: per file the sha256, the error (a bad
file never stops the job), the decoder's warnings, and what the input gate reads (original
shape, colour share, DICOM facts); the decoded images of the readable files are stacked at the
model's size. `decoded_chunks` keeps a bounded number of chunks in flight, so the workers decode
the next chunks while the network scores the current one and memory stays flat.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import sys
import traceback
import warnings
import zipfile
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from xray_core import imaging
from xray_core.scoring.inputs import ZIP_SEP, ScoreError, read_item_bytes

#: Chunks in flight per worker: one being decoded and one waiting, ready for the network.
IN_FLIGHT_PER_WORKER = 2


@dataclass
class DecodedChunk:
    """What a worker returns for a chunk of items: per item the hash, error, warnings and facts the
    input gate reads (original shape, colour share, DICOM header facts), and the decoded images
    (model size, uint8) of the items without an error, stacked in item order."""

    items: list
    sha256: list
    errors: list
    warnings: list
    images: np.ndarray  # (n_ok, h, w) uint8
    shapes: list  # per decoded image: (height, width) of the original
    saturations: list  # per decoded image: share of coloured pixels, or None
    dicoms: list  # per decoded image: imaging.dicom_facts, or None


def _original_shape(raw: bytes) -> tuple[int, int] | None:
    """(height, width) of a Pillow-readable image from its header alone (no pixel decode)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as im:
            return im.size[1], im.size[0]
    except (UnidentifiedImageError, OSError, ValueError):
        return None


def _decode_one(raw: bytes, name: str, size: tuple[int, int], draft: bool):
    """(image at `size`, original shape, colour share, DICOM facts) of one file's bytes."""
    facts = None
    if imaging.is_dicom(raw):
        full = imaging.decode(raw, filename=name)
        img, shape = imaging.resize(full, size), full.shape
        facts = imaging.dicom_facts(raw, filename=name)
    elif draft:
        img = imaging.decode_resized(raw, size, filename=name)
        shape = _original_shape(raw)
    else:
        full = imaging.decode(raw, filename=name)
        img, shape = imaging.resize(full, size), full.shape
    return img, shape, imaging.colour_saturation(raw, filename=name), facts


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def decode_items(items: list, size: tuple[int, int], draft: bool = True) -> DecodedChunk:
    """Read, hash and decode each item to `size` (what one worker does for one chunk).

    `draft=False` decodes at full resolution and then resizes, as `predict` does; `draft=True`
    (default) lets a large JPEG decode at a reduced DCT scale first, as training does.
    """
    h, w = size
    shas, errors, notes, images, shapes, sats, dicoms = [], [], [], [], [], [], []
    for item in items:
        sha, error, note = "", "", ""
        if item.missing:
            error = item.missing
        else:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    raw = read_item_bytes(item.path)
                    sha = hashlib.sha256(raw).hexdigest()
                    name = item.path.rsplit(ZIP_SEP, 1)[-1].rsplit("/", 1)[-1]
                    img, shape, saturation, facts = _decode_one(raw, name, (h, w), draft)
                note = "; ".join(dict.fromkeys(str(c.message) for c in caught))
                images.append(img)
                shapes.append(shape)
                sats.append(saturation)
                dicoms.append(facts)
            except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
                error = str(exc) or type(exc).__name__
            except Exception as exc:  # noqa: BLE001 - recorded, not hidden: one odd file must not end a night's job
                traceback.print_exc(file=sys.stderr)
                error = (f"internal error while reading this file ({type(exc).__name__}: {exc}); "
                         "this is a bug, please report it with the file's details")
        shas.append(sha)
        errors.append(one_line(error))
        notes.append(one_line(note))
    stacked = np.stack(images) if images else np.zeros((0, h, w), np.uint8)
    return DecodedChunk(list(items), shas, errors, notes, stacked, shapes, sats, dicoms)


def default_workers() -> int:
    """Decoding processes by default: one per CPU this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def decoded_chunks(chunks: Iterator[list], size: tuple[int, int], draft: bool, workers: int) -> Iterator[DecodedChunk]:
    """Decoded chunks in input order. With workers > 0 a pool of processes decodes ahead: at most
    IN_FLIGHT_PER_WORKER chunks per worker are submitted and not yet taken, so the next chunks are
    decoded while the caller scores this one, and memory stays bounded. workers = 0 decodes here."""
    if workers <= 0:
        for chunk in chunks:
            yield decode_items(chunk, size, draft)
        return
    # spawn: the parent may hold TensorFlow's threads, which a fork would copy half-alive. An
    # executor, not multiprocessing.Pool: a worker that dies (killed for memory, say) breaks it
    # and the job ends with a sentence, where a Pool would wait for its result forever.
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        inflight: deque = deque()
        try:
            for chunk in chunks:
                inflight.append(pool.submit(decode_items, chunk, size, draft))
                if len(inflight) >= IN_FLIGHT_PER_WORKER * workers:
                    yield inflight.popleft().result()
            while inflight:
                yield inflight.popleft().result()
        except BrokenProcessPool:
            raise ScoreError(
                "A decoding worker process died (the system may have stopped it for lack of memory). "
                "The rows written so far are kept: run the same command again to go on, with fewer "
                "--workers or a smaller --batch-size if it happens again.") from None
        finally:  # stopped early (a cancel, an error in the caller): drop the chunks not started
            pool.shutdown(wait=False, cancel_futures=True)
