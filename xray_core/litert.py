"""A Model's forward pass on CPU as one LiteRT program (TensorFlow Lite, XNNPACK kernels).

On CPU, LiteRT runs the same float32 networks faster than TensorFlow's graph runtime (the
default ensemble on 2 cores: benchmarks/reports/forward.md), with outputs equal within 1e-5
(tests/test_litert.py). With a GPU visible TensorFlow is faster, so it stays in charge.

`XRAY_BACKEND` picks: `auto` (the default: LiteRT on a CPU-only machine when `ai_edge_litert` is
installed, else TensorFlow), `litert` or `tensorflow`. The program is the Model's own compiled
forward function (every member, both outputs) with its weights frozen in, converted once and
cached under the cache folder by the hash of the network files, so a retrained run converts
anew. Only `xray_core.model` calls this module.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import numpy as np

BACKENDS = ("auto", "litert", "tensorflow")
ENV = "XRAY_BACKEND"
CHUNK = 8  # images per invoke: 4-8 run fastest on 2 CPU cores; larger ones only miss the caches
_INTERPRETERS_KEPT = 6  # batch sizes with a ready interpreter (a full batch and a few tails)


class BackendError(RuntimeError):
    """The asked-for backend cannot run here."""


def litert_available() -> bool:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def chosen_backend() -> str:
    """'litert' or 'tensorflow', from XRAY_BACKEND and what the machine has."""
    asked = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if asked not in BACKENDS:
        raise BackendError(f"{ENV}={asked!r} is not a backend; use one of: {', '.join(BACKENDS)}.")
    if asked == "tensorflow":
        return "tensorflow"
    if asked == "litert":
        if not litert_available():
            raise BackendError(f"{ENV}=litert, but ai_edge_litert is not installed: pip install -r requirements.txt.")
        return "litert"
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or not litert_available():
        return "tensorflow"
    return "litert"


def program_key(files: Sequence[str | os.PathLike], signature: str) -> str:
    """Hash of the network files' bytes, the forward function's signature and the versions
    that shape the conversion."""
    import tensorflow as tf
    from importlib.metadata import version

    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    h.update(f"{signature}|tf {tf.__version__}|litert {version('ai-edge-litert')}".encode())
    return h.hexdigest()[:32]


def convert(forward) -> bytes:
    """A tf.function with one input signature -> a LiteRT flatbuffer with the weights frozen in
    (the batch dimension stays open)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    frozen = convert_variables_to_constants_v2(forward.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen], tf.Module())
    return converter.convert()


def load_or_convert(forward, files: Sequence[str | os.PathLike], signature: str, cache_dir: str | os.PathLike) -> bytes:
    """The cached program for these network files, converted and cached on first use. A cache
    folder that cannot be written costs the conversion each time, nothing else."""
    from xray_core import fileio

    path = Path(cache_dir) / "litert" / f"{program_key(files, signature)}.tflite"
    if path.is_file():
        return path.read_bytes()
    program = convert(forward)
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


def _allocate(interpreter) -> None:
    """allocate_tensors, the first time in this process with LiteRT's note to stderr filtered
    out as TensorFlow's start-up notes are (xray_core.quiet), unless the user asked for logs."""
    global _announced
    from xray_core import quiet

    if _announced or not quiet.is_quiet():
        interpreter.allocate_tensors()
        return
    with quiet.filtered_stderr():
        interpreter.allocate_tensors()
    _announced = True


class Program:
    """Calls a converted forward function on float32 batches: batch -> tuple of numpy outputs,
    in the order of the function's outputs. One interpreter per batch size seen recently (a
    resize re-plans the kernels); calls are serialised, as an interpreter is not thread-safe."""

    def __init__(self, flatbuffer: bytes, *, threads: int | None = None, chunk: int = CHUNK):
        from ai_edge_litert.interpreter import Interpreter

        self.chunk = int(chunk)
        self._make = lambda: Interpreter(model_content=flatbuffer, num_threads=threads or default_threads())
        self._ready: OrderedDict[int, object] = OrderedDict()
        self._lock = threading.Lock()
        probe = self._make()
        self._input = probe.get_input_details()[0]["index"]
        # outputs come back in the function's order: the converter names them ...:0, ...:1
        outputs = probe.get_output_details()
        self._outputs = [o["index"] for o in sorted(outputs, key=lambda o: int(o["name"].rsplit(":", 1)[-1]))]
        self._shape = [int(v) for v in probe.get_input_details()[0]["shape_signature"]]

    def _interpreter(self, n: int):
        it = self._ready.pop(n, None)
        if it is None:
            it = self._make()
            it.resize_tensor_input(self._input, [n, *self._shape[1:]], strict=True)
            _allocate(it)
        self._ready[n] = it
        while len(self._ready) > _INTERPRETERS_KEPT:
            self._ready.popitem(last=False)
        return it

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, ...]:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        parts = []
        with self._lock:
            for start in range(0, len(batch), self.chunk):
                piece = batch[start : start + self.chunk]
                it = self._interpreter(len(piece))
                it.set_tensor(self._input, piece)
                it.invoke()
                parts.append([it.get_tensor(i) for i in self._outputs])  # get_tensor copies
        return tuple(np.concatenate(column, axis=0) for column in zip(*parts))
