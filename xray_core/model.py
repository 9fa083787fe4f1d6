"""The model object: prepared films in, P(pneumonia) out, at an operating threshold.

`load_model(run)` returns a `Model`, and every consumer goes through its one function,
`Model.forward(batch) -> Scores`: the members' outputs, their mean, the calibration and the
features the input gate reads, from one pass. A model is a run folder:

- the networks: `model.keras` (or the members listed in model.json), and `networks.tflite`,
  the same networks as one LiteRT program (every member, both outputs), which is what runs on
  a machine without a GPU, without importing TensorFlow;
- `model.json` (optional): `{"members": [...], "temperature": T, "bias": b, "threshold": t,
  "input_size": [h, w], "channels": c, "litert": {"file": ..., "key": ...}}`. A run without it
  keeps its threshold in `metrics.json` and loads uncalibrated (T = 1, b = 0). A derived run
  (`xray recalibrate`) names a `"parent"` folder whose networks it uses, without a copy.

An ensemble's probability is the mean of its members' P(pneumonia); calibration is Platt
scaling of the logit of that mean, `sigmoid(logit(p) / T + b)`; the threshold is on that scale.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xray_core import fileio, runs

CLASSES = ("NORMAL", "PNEUMONIA")
PNEUMONIA = 1  # index of the pneumonia class: what the product predicts and explains
SPEC_FILE = "model.json"
PROGRAM_FILE = "networks.tflite"
_EPS = 1e-7


class ModelError(ValueError):
    """A run folder that does not hold a usable model, or input the model cannot take."""


class ConversionNotice(UserWarning):
    """A run without a LiteRT program of its networks is converted once (needs TensorFlow)."""


def pneumonia_column(output_units: int) -> int:
    """Column of a network's output that holds P(pneumonia): the seed's 2-unit heads put it in
    column 1 (one-hot [NORMAL, PNEUMONIA]); 1-unit heads have only column 0."""
    if output_units not in (1, 2):
        raise ModelError(f"a pneumonia model has 1 or 2 outputs; got {output_units!r}.")
    return 1 if output_units == 2 else 0


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def calibrate(p: np.ndarray, temperature: float, bias: float = 0.0) -> np.ndarray:
    """Platt scaling of probabilities, ``sigmoid(logit(p) / temperature + bias)``.

    Monotone for a temperature above 0, so it never reorders films; temperature 1 and bias 0 change
    nothing, and bias 0 alone is temperature scaling. Returns float64 of the shape of `p`.
    """
    if temperature == 1.0 and bias == 0.0:
        return np.asarray(p, dtype=np.float64)
    return sigmoid(logit(p) / float(temperature) + float(bias))


@dataclasses.dataclass(frozen=True)
class Scores:
    """What one forward pass says about a batch of n films from a model of k members.

    Attributes
    ----------
    raw : (n, k) float64, each member's uncalibrated P(pneumonia).
    proba : (n,) float64, the calibrated P(pneumonia) of the members' mean: the probability
        every user sees.
    member_proba : (n, k) float64, each member's P(pneumonia) through the same calibration
        (the ensemble's spread beside a verdict).
    features : (n, d) float32, penultimate activations averaged over the members (the input
        gate measures distances in this space).
    """

    raw: np.ndarray
    proba: np.ndarray
    member_proba: np.ndarray
    features: np.ndarray

    @property
    def uncalibrated(self) -> np.ndarray:
        """(n,) the members' mean before calibration (what recalibration fits)."""
        return self.raw.mean(axis=1)


class Model:
    """A trained pneumonia model loaded from its run folder (use `load_model`, which shares them).

    The networks load lazily and once, thread-safely: the dashboard's sessions share one Model.
    On a machine without a GPU they run as the run's LiteRT program, and TensorFlow is never
    imported; `members` (the Keras networks, for Grad-CAM and conversion) imports it.

    Parameters
    ----------
    path : str or os.PathLike
        The run folder.
    spec : dict, optional
        Replaces model.json (e.g. temperature 1 to score uncalibrated while fitting it).
    """

    def __init__(self, path: str | os.PathLike, *, spec: dict | None = None):
        self.path = Path(path)
        self.run_id = self.path.name
        spec_path = self.path / SPEC_FILE
        self.spec: dict = dict(spec) if spec is not None else (fileio.read_json(spec_path) if spec_path.is_file() else {})
        parent = self.spec.get("parent")
        self.networks_dir = (self.path / parent).resolve() if parent else self.path
        if parent:
            parent_spec_path = self.networks_dir / SPEC_FILE
            self._parent_spec = fileio.read_json(parent_spec_path) if parent_spec_path.is_file() else {}
        else:
            self._parent_spec = self.spec
        files = self._parent_spec.get("members") or [runs.MODEL_FILE]
        self._member_files = [self.networks_dir / name for name in files]
        missing = [p.name for p in self._member_files if not p.is_file()]
        if missing:
            where = f"its parent {self.networks_dir}" if parent else str(self.path)
            raise runs.RunNotFound(
                f"The run {self.run_id!r} has no model file {', '.join(missing)} in {where}. It may still "
                "be training, or it failed before saving; check `python -m xray_core runs`."
            )
        self._members: list | None = None
        self._keras_forward = None
        self._runner = None
        self._lanes = None
        self._program: bytes | None = None  # the LiteRT flatbuffer, read (and its files hashed) once
        self.backend: str | None = None  # 'litert' or 'tensorflow' once the first batch ran
        self._lock = threading.Lock()
        self._runner_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Model({self.run_id!r}, members={len(self._member_files)}, input={self.input_size}x"
                f"{self.channels}, threshold={self.threshold:.4f}, temperature={self.temperature:.3f}, "
                f"bias={self.bias:.3f})")

    # ------------------------------------------------------------------ what the run says

    @property
    def config(self) -> dict:
        path = self.networks_dir / runs.CONFIG_FILE
        config = fileio.read_json(path) if path.is_file() else {}
        return config if isinstance(config, dict) else {}

    @property
    def metrics(self) -> dict:
        path = self.path / runs.METRICS_FILE
        metrics = fileio.read_json(path) if path.is_file() else {}
        return metrics if isinstance(metrics, dict) else {}

    @property
    def n_members(self) -> int:
        return len(self._member_files)

    @property
    def input_size(self) -> tuple[int, int]:
        size = self._parent_spec.get("input_size") or self.config.get("image_size")
        if size is None:
            shape = self.members[0].inputs[0].shape
            return int(shape[1]), int(shape[2])
        if isinstance(size, (list, tuple)):
            return int(size[0]), int(size[1])
        return int(size), int(size)

    @property
    def channels(self) -> int:
        channels = self._parent_spec.get("channels") or self.config.get("channels")
        if channels is None:
            return int(self.members[0].inputs[0].shape[-1])
        return int(channels)

    @property
    def threshold(self) -> float:
        """The operating threshold on the calibrated scale."""
        value = self.spec.get("threshold")
        if value is None:
            value = self.metrics.get("threshold")
        return float(value) if value is not None else 0.5

    @property
    def threshold_policy(self) -> str:
        return str(self.spec.get("threshold_policy") or self.metrics.get("threshold_method") or "sensitivity")

    @property
    def temperature(self) -> float:
        return float(self.spec.get("temperature") or 1.0)

    @property
    def bias(self) -> float:
        """Platt scaling's shift of the logit (0: temperature scaling only)."""
        return float(self.spec.get("bias") or 0.0)

    @property
    def fingerprint(self) -> str:
        """Changes when what this Model answers could: its model.json (or spec) and network files."""
        import hashlib
        import json

        h = hashlib.sha256(json.dumps(self.spec, sort_keys=True, default=str).encode())
        for p in self._member_files:
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]

    @property
    def classes(self) -> tuple[str, str]:
        return CLASSES

    def verdict(self, probability: float) -> str:
        """NORMAL or PNEUMONIA: PNEUMONIA from the operating threshold up."""
        return CLASSES[int(float(probability) >= self.threshold)]

    @property
    def card(self) -> dict:
        """What a model card states: run, architecture, input, threshold and policy, calibration,
        plain and shift-stress validation figures (with intervals where computed)."""
        metrics = self.metrics
        return {
            "run_id": self.run_id,
            "arch": self.config.get("arch"),
            "members": self.n_members,
            "input_size": list(self.input_size),
            "channels": self.channels,
            "threshold": self.threshold,
            "threshold_policy": self.threshold_policy,
            "temperature": self.temperature,
            "bias": self.bias,
            "arithmetic": "float32",
            "parent": self.spec.get("parent"),
            "validation": metrics.get("validation"),
            "validation_ci95": metrics.get("validation_ci95"),
            "stress": metrics.get("stress"),
            "calibration": metrics.get("calibration"),
        }

    # ------------------------------------------------------------------ inference

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        """A decoded gray image (2-D uint8, any size) -> this model's input (h, w, c) float32 0..255."""
        from xray_core import imaging

        return imaging.to_model_input(img, self.input_size, channels=self.channels)

    def prepare_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        h, w = self.input_size
        if len(images) == 0:
            return np.zeros((0, h, w, self.channels), np.float32)
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.shape[1:] == (h, w):
            from xray_core import imaging

            return imaging.with_channels(images, self.channels)  # a stack already at size, at once
        return np.stack([self.preprocess(img) for img in images])

    def _as_batch(self, x: Any) -> np.ndarray:
        if isinstance(x, (list, tuple)):
            return self.prepare_batch(x)
        x = np.asarray(x, dtype=np.float32)
        h, w = self.input_size
        c = self.channels
        if x.ndim == 3 and x.shape == (h, w, c):
            x = x[None]
        if x.ndim != 4 or x.shape[1:] != (h, w, c):
            raise ModelError(
                f"Model {self.run_id!r} takes prepared images of shape (N, {h}, {w}, {c}) (or a list of "
                f"decoded 2-D images); got an array of shape {x.shape}. Use Model.preprocess() on each image."
            )
        return x

    def forward(self, x: Any, *, batch_size: int = 256, throughput: bool = False) -> Scores:
        """The one forward pass: every probability the product shows comes from here.

        Parameters
        ----------
        x : ndarray of shape (n, h, w, c) float32 in 0..255, or a list of decoded 2-D images
            A prepared batch at `input_size` and `channels` (see `prepare_batch`).
        throughput : bool
            Run the batch on one core, so that as many batches as there are cores run at once
            from different threads (batch scoring); the default spreads one batch over every
            core (the lowest latency for one film). The numbers are the same either way.

        Returns
        -------
        Scores
            Members' and calibrated probabilities and the gate's features of the n films.

        Raises
        ------
        ModelError
            For an array of another shape.
        """
        x = self._as_batch(x)
        if len(x) == 0:
            empty = np.zeros((0, self.n_members), np.float64)
            return Scores(empty, np.zeros(0, np.float64), empty, np.zeros((0, 0), np.float32))
        run = self._run(lanes=throughput)
        probs, feats = [], []
        for i in range(0, len(x), batch_size):
            p, f = run(x[i : i + batch_size])
            probs.append(np.asarray(p))
            feats.append(np.asarray(f))
        raw = np.concatenate(probs, axis=0).astype(np.float64)
        return Scores(raw=raw, proba=calibrate(raw.mean(axis=1), self.temperature, self.bias),
                      member_proba=calibrate(raw, self.temperature, self.bias),
                      features=np.concatenate(feats, axis=0).astype(np.float32))

    def predict_proba(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """(n,) calibrated P(pneumonia): `forward(x).proba`."""
        return self.forward(x, batch_size=batch_size).proba

    def predict(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """(n,) class indices: 1 = PNEUMONIA from the threshold up, else 0 = NORMAL."""
        return (self.predict_proba(x, batch_size=batch_size) >= self.threshold).astype(int)

    # ------------------------------------------------------------------ the networks

    @property
    def members(self) -> list:
        """The Keras networks (one, or an ensemble's members), loaded on first use (imports
        TensorFlow: Grad-CAM, conversion and export only)."""
        if self._members is None:
            with self._lock:
                if self._members is None:
                    self._members = [load_network(p) for p in self._member_files]
        return self._members

    @property
    def output_units(self) -> int:
        return int(self.members[0].outputs[0].shape[-1])

    @property
    def signature(self) -> str:
        h, w = self.input_size
        return f"{h}x{w}x{self.channels}"

    def keras_forward(self):
        """The members as one tf.function: batch -> ((n, k) P(pneumonia) of each member, (n, d)
        features averaged over members). What LiteRT's program is converted from, and what runs
        with TensorFlow on a GPU."""
        if self._keras_forward is None:
            import keras
            import tensorflow as tf

            members = self.members
            columns = [pneumonia_column(int(m.outputs[0].shape[-1])) for m in members]
            # Each member as one network with two outputs: the input of its output layer (the
            # features) and its output, so the gate's features cost no second pass.
            nets = [keras.Model(m.inputs, [m.layers[-1].input, m.outputs[0]]) for m in members]
            h, w = self.input_size
            spec = tf.TensorSpec((None, h, w, self.channels), tf.float32)

            @tf.function(input_signature=[spec], reduce_retracing=True)
            def forward(batch):
                probs, feats = [], []
                for net, col in zip(nets, columns):
                    feat, out = net(batch, training=False)
                    probs.append(out[:, col])
                    feats.append(tf.reshape(feat, (tf.shape(batch)[0], -1)))
                return tf.stack(probs, axis=1), tf.add_n(feats) / float(len(feats))

            self._keras_forward = forward
        return self._keras_forward

    def program_key(self) -> str:
        from xray_core import litert

        return litert.program_key(self._member_files, self.signature)

    def program(self) -> bytes:
        """The LiteRT program of the networks: the run's own networks.tflite when it was made from
        these network files, else the cache's copy, else converted now (TensorFlow) and cached.
        Found once per Model (the batch runner and the scorer's lanes share it)."""
        if self._program is None:
            self._program = self._find_program()
        return self._program

    def _find_program(self) -> bytes:
        from xray_core import litert
        from xray_core.fileio import default_cache_dir

        key = self.program_key()
        shipped = self._parent_spec.get("litert") or {}
        if shipped.get("key") == key and (self.networks_dir / shipped.get("file", PROGRAM_FILE)).is_file():
            return (self.networks_dir / shipped.get("file", PROGRAM_FILE)).read_bytes()
        cached = litert.cached_program(key, default_cache_dir())
        if cached is not None:
            return cached
        warnings.warn(
            f"The run {self.run_id!r} has no LiteRT program of its networks ({PROGRAM_FILE}); converting "
            f"it once with TensorFlow and caching it in {default_cache_dir()} "
            "(`Model.save_program()` stores it in the run folder instead).",
            ConversionNotice, stacklevel=4)
        return litert.cache_program(key, litert.convert(self.keras_forward()), default_cache_dir())

    def save_program(self) -> Path:
        """Write networks.tflite into the run folder and record it in model.json (when a run is
        finalised; once for the bundled runs)."""
        from xray_core import litert

        if self.spec.get("parent"):
            raise ModelError(f"The run {self.run_id!r} uses its parent's networks; save the parent's program.")
        target = self.path / PROGRAM_FILE
        fileio.atomic_write_bytes(target, litert.convert(self.keras_forward()))
        spec = fileio.read_json(self.path / SPEC_FILE) if (self.path / SPEC_FILE).is_file() else {
            "members": [p.name for p in self._member_files], "input_size": list(self.input_size),
            "channels": self.channels, "threshold": self.threshold, "temperature": self.temperature,
            "bias": self.bias, "threshold_policy": self.threshold_policy}
        spec["litert"] = {"file": PROGRAM_FILE, "key": self.program_key()}
        fileio.atomic_write_json(self.path / SPEC_FILE, spec)
        self.spec["litert"] = spec["litert"]
        return target

    def _run(self, *, lanes: bool = False):
        """The callable that runs the networks here: the LiteRT program on a CPU (all threads on
        one batch, or with `lanes` one-thread lanes, one per core, side by side), the tf.function
        with a GPU or XRAY_BACKEND=tensorflow."""
        with self._runner_lock:
            if self._runner is None:
                from xray_core import litert

                if litert.chosen_backend() == "litert":
                    self._runner, self.backend = litert.Program(self.program()), "litert"
                else:
                    self._runner, self.backend = self.keras_forward(), "tensorflow"
            if not lanes or self.backend != "litert":
                return self._runner
            if self._lanes is None:
                from xray_core import litert

                cores = litert.default_threads()
                self._lanes = litert.Program(self.program(), threads=1, lanes=cores)
            return self._lanes


def load_network(path: str | os.PathLike):
    """One Keras network file, for inference (uncompiled: the training metrics it names are not
    needed, so nothing of the training code is imported) and in safe mode (no Lambda layers or
    other arbitrary code); a sentence when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise runs.RunNotFound(
            f"There is no model file at {path}. The run may still be training, or it failed before "
            "saving; check its status with `python -m xray_core runs`."
        )
    import keras

    return keras.models.load_model(path, safe_mode=True, compile=False)


_NETWORK_FNS: "weakref.WeakKeyDictionary[Any, Any]" = weakref.WeakKeyDictionary()


def network_outputs(network, x: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
    """(n, units) raw outputs of one Keras network on prepared batches: training-time evaluation
    of a network that is not a run yet (callbacks, distributed workers, the seed's micro recall).
    One tf.function per network, traced once and dropped with the network."""
    fn = _NETWORK_FNS.get(network)
    if fn is None:
        import tensorflow as tf

        ref = weakref.ref(network)
        fn = _NETWORK_FNS[network] = tf.function(lambda b: ref()(b, training=False), reduce_retracing=True)
    x = np.asarray(x, np.float32)
    parts = [np.asarray(fn(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    units = int(network.outputs[0].shape[-1])
    return np.concatenate(parts, axis=0).astype(np.float64) if parts else np.zeros((0, units))


_CACHE: collections.OrderedDict[tuple[str, tuple], Model] = collections.OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHED_MODELS = 4  # the runs a process keeps loaded, the least recently used dropped first


def _stamp(path: Path) -> tuple:
    """What defines a loaded model, as (file, size, mtime) of each: its model.json, the network files,
    their LiteRT program, the gate and the conformal sets, in its folder and, for a derived run, in its
    parent's."""
    import json

    folders = [path]
    try:
        parent = json.loads((path / SPEC_FILE).read_text()).get("parent")
    except (OSError, ValueError, AttributeError):
        parent = None  # no or unreadable model.json: Model(path) says what is wrong
    if isinstance(parent, str):
        folders.append((path / parent).resolve())
    stamps = []
    for folder in folders:
        for p in sorted(folder.glob("*")):
            if p.suffix in (".json", ".keras", ".tflite", ".npz") and p.is_file():
                st = p.stat()
                stamps.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(stamps)


def load_model(run: Any, *, root: str | os.PathLike | None = None, cache: bool = True) -> Model:
    """The Model of a run, shared per folder and reloaded when its model.json or network changes.

    Parameters
    ----------
    run : str, os.PathLike, runs.Run or Model
        A run id (looked up in the registry `root`; see `runs.runs_root`) or a run folder.
    cache : bool
        False builds a Model of its own.

    Raises
    ------
    runs.RunNotFound, runs.InvalidRunId
        With a sentence naming the run and what to do (also for a missing network file).
    """
    if isinstance(run, Model):
        return run
    if isinstance(run, runs.Run):
        path = run.path
    else:
        path = runs.load_run(run, root=root).path
    path = Path(path).absolute()
    if not cache:
        return Model(path)
    key = (str(path), _stamp(path))
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            for stale in [k for k in _CACHE if k[0] == key[0]]:
                del _CACHE[stale]
            model = Model(path)
            _CACHE[key] = model
            while len(_CACHE) > CACHED_MODELS:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
    return model


def write_spec(run_dir: str | os.PathLike, *, members: Sequence[str], input_size: tuple[int, int],
               channels: int, threshold: float, temperature: float = 1.0, bias: float = 0.0,
               threshold_policy: str = "sensitivity", extra: dict | None = None) -> Path:
    """Write model.json (atomically): what load_model needs beyond the network files."""
    spec = {"members": list(members), "input_size": [int(input_size[0]), int(input_size[1])],
            "channels": int(channels), "threshold": float(threshold), "temperature": float(temperature),
            "bias": float(bias), "threshold_policy": threshold_policy}
    spec.update(extra or {})
    return fileio.atomic_write_json(Path(run_dir) / SPEC_FILE, spec)
