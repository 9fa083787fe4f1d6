"""The networks' forward pass on CPU as one LiteRT program (XNNPACK kernels), without TensorFlow.

A run folder carries its networks as `networks.tflite` (every member, both outputs: each
member's P(pneumonia) and the averaged penultimate features), written when the run is
finalised; `Program` runs it with ai-edge-litert and numpy alone. A run without one is
converted once from its Keras networks (the one step here that imports TensorFlow) and cached
under the cache folder by the hash of the network files, so a retrained run converts anew.

`XRAY_BACKEND` picks: `auto` (the default: LiteRT, or TensorFlow where a GPU is visible),
`litert` or `tensorflow`. `xray_core.model` runs the networks through it; `export` and the
batch scorer use its conversion and program only.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

BACKENDS = ("auto", "litert", "tensorflow")
ENV = "XRAY_BACKEND"
PROGRAM_FORMAT = "members-proba+features/v1"  # what the program computes, part of its cache key
CHUNK = 8  # images per invoke: small enough that a batch's activations stay in the CPU caches
_INTERPRETERS_KEPT = 6  # batch sizes with a ready interpreter (a full batch and a few tails)


class BackendError(RuntimeError):
    """The asked-for backend cannot run here."""


def litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def gpu_visible() -> bool:
    """Whether an NVIDIA GPU is visible to this process, judged from the driver's device files so
    that TensorFlow need not be imported to find out (CUDA_VISIBLE_DEVICES="" or -1 hides it)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or any(Path("/dev").glob("nvidia[0-9]*"))


def chosen_backend() -> str:
    """'litert' or 'tensorflow', from XRAY_BACKEND and what the machine has, without importing
    TensorFlow: auto picks TensorFlow only where a GPU is visible and TensorFlow is installed."""
    asked = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if asked not in BACKENDS:
        raise BackendError(f"{ENV}={asked!r} is not a backend; use one of: {', '.join(BACKENDS)}.")
    if asked == "tensorflow":
        return "tensorflow"
    if asked == "litert":
        if not litert_available():
            raise BackendError(f"{ENV}=litert, but ai_edge_litert is not installed: pip install -r requirements.txt.")
        return "litert"
    import importlib.util

    has_tf = importlib.util.find_spec("tensorflow") is not None
    if has_tf and (gpu_visible() or not litert_available()):
        return "tensorflow"
    if not litert_available():
        raise BackendError("Neither ai_edge_litert nor TensorFlow is installed; pip install ai-edge-litert "
                           "to run models (or tensorflow to train them).")
    return "litert"


def program_key(files: Sequence[str | os.PathLike], signature: str) -> str:
    """Hash of the network files' bytes and the forward function's signature: the same networks
    give the same program whatever converted them."""
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update(f"{signature}|{PROGRAM_FORMAT}".encode())
    return h.hexdigest()[:32]


def convert(forward) -> bytes:
    """A tf.function with one input signature -> a LiteRT flatbuffer with the weights frozen in
    (the batch dimension stays open)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(forward.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
    return converter.convert()


def _cache_path(key: str, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / "litert" / f"{key}.tflite"


def cached_program(key: str, cache_dir: str | os.PathLike) -> bytes | None:
    path = _cache_path(key, cache_dir)
    return path.read_bytes() if path.is_file() else None


def cache_program(key: str, program: bytes, cache_dir: str | os.PathLike) -> bytes:
    """Keep a converted program in the cache folder; one that cannot be written costs the
    conversion next time, nothing else."""
    from xray_core import fileio

    path = _cache_path(key, cache_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fileio.atomic_write_bytes(path, program)
    except OSError as exc:
        import warnings

        warnings.warn(f"Could not cache the compiled model in {path.parent} ({exc}); it is converted "
                      "again next time. Set XRAY_CACHE_DIR to a writable folder.", RuntimeWarning, stacklevel=2)
    return program


def default_threads() -> int:
    """Threads for one interpreter: OMP_NUM_THREADS when set (Ray sets it to an actor's CPUs, so
    actors sharing a node do not oversubscribe it), else the CPUs this process may run on."""
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()
    if asked.isdigit() and int(asked) > 0:
        return int(asked)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_announced = False  # LiteRT says it created its XNNPACK delegate once per process, on stderr
_announce_lock = threading.Lock()  # filtered_stderr swaps fd 2: two threads at once would lose it


def _allocate(interpreter) -> None:
    """allocate_tensors, the first time in this process with LiteRT's note to stderr filtered
    out as TensorFlow's start-up notes are (xray_core.quiet), unless the user asked for logs."""
    global _announced
    from xray_core import quiet

    if _announced or not quiet.is_quiet():
        interpreter.allocate_tensors()
        return
    with _announce_lock:
        if _announced:
            interpreter.allocate_tensors()
            return
        with quiet.filtered_stderr():
            interpreter.allocate_tensors()
        _announced = True


class Program:
    """Calls a converted forward function on float32 batches: batch -> tuple of numpy outputs,
    in the order of the function's outputs.

    `threads` is each interpreter's thread count (all the cores by default: the lowest latency
    for one batch); `lanes` how many batches may run at once, from different threads, each on
    interpreters of its own (batch scoring runs one-thread lanes side by side: no thread of one
    waits at another's barrier). A lane keeps an interpreter per batch size seen recently (a
    resize re-plans the kernels); an interpreter is not thread-safe, so a lane serves one call
    at a time and a call waits for a free lane.
    """

    def __init__(self, flatbuffer: bytes, *, threads: int | None = None, lanes: int = 1, chunk: int = CHUNK):
        from ai_edge_litert.interpreter import Interpreter

        self.chunk = int(chunk)
        self.threads = int(threads or default_threads())
        self._make = lambda: Interpreter(model_content=flatbuffer, num_threads=self.threads)
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(max(1, int(lanes))):
            self._free.put(OrderedDict())
        probe = self._make()
        self._input = probe.get_input_details()[0]["index"]
        # outputs come back in the function's order: the converter names them ...:0, ...:1
        outputs = probe.get_output_details()
        self._outputs = [o["index"] for o in sorted(outputs, key=lambda o: int(o["name"].rsplit(":", 1)[-1]))]
        self._shape = [int(v) for v in probe.get_input_details()[0]["shape_signature"]]

    def _interpreter(self, lane: OrderedDict, n: int):
        it = lane.pop(n, None)
        if it is None:
            it = self._make()
            it.resize_tensor_input(self._input, [n, *self._shape[1:]], strict=True)
            _allocate(it)
        lane[n] = it
        while len(lane) > _INTERPRETERS_KEPT:
            lane.popitem(last=False)
        return it

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = []
        lane = self._free.get()  # waits while every lane is busy
        try:
            for start in range(0, len(batch), self.chunk):
                piece = batch[start : start + self.chunk]
                it = self._interpreter(lane, len(piece))
                it.set_tensor(self._input, piece)
                it.invoke()
                parts.append([it.get_tensor(i) for i in self._outputs])  # get_tensor copies
        finally:
            self._free.put(lane)
        return tuple(np.concatenate(column, axis=0) for column in zip(*parts))
