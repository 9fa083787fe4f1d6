"""The model object: a film in, P(pneumonia) out, at an operating threshold.

`load_model(run)` returns a `Model`, and every consumer (predict, score, evaluate, explain,
report, the pages) goes through it, so there is one forward path, one rule for which output is
pneumonia, one calibration and one threshold. A model is a run folder:

- `model.keras`: the network (or the first member of an ensemble);
- `model.json` (optional): `{"members": [...file names...], "temperature": T, "threshold": t,
  "input_size": [h, w], "channels": c}`. Runs trained before it existed have only `model.keras`
  and keep their threshold in `metrics.json`; they load the same way, uncalibrated (T = 1).

An ensemble's probability is the mean of its members' P(pneumonia); calibration divides the
logit of that mean by the temperature and shifts it by the bias of Platt scaling, both fitted
on the shift-stress validation. The threshold is on the calibrated scale.

TensorFlow is imported only when a network is first used.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from xray_core import fileio, runs

SPEC_FILE = "model.json"
_EPS = 1e-7


class ModelError(ValueError):
    """A run folder that does not hold a usable model, or input the model cannot take."""


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
    """Platt scaling of probabilities: sigmoid(logit(p) / T + bias). T = 1 and bias = 0 change
    nothing; bias = 0 is plain temperature scaling. Monotone (T > 0): it never reorders films."""
    if temperature == 1.0 and bias == 0.0:
        return np.asarray(p, dtype=np.float64)
    return sigmoid(logit(p) / float(temperature) + float(bias))


class Model:
    """A trained pneumonia model loaded from its run folder (safe_mode: no arbitrary code).

    Networks load lazily and once (thread-safe: Streamlit sessions share one Model).
    """

    def __init__(self, path: str | os.PathLike, *, spec: dict | None = None):
        """spec overrides model.json (e.g. temperature 1 to score uncalibrated while fitting it)."""
        self.path = Path(path)
        self.run_id = self.path.name
        spec_path = self.path / SPEC_FILE
        self.spec: dict = dict(spec) if spec is not None else (fileio.read_json(spec_path) if spec_path.is_file() else {})
        files = self.spec.get("members") or [runs.MODEL_FILE]
        self._member_files = [self.path / name for name in files]
        missing = [p.name for p in self._member_files if not p.is_file()]
        if missing:
            raise runs.RunNotFound(
                f"The run {self.run_id!r} has no model file {', '.join(missing)} in {self.path}. It may still "
                "be training, or it failed before saving; check `python -m xray_core runs`."
            )
        self._members: list | None = None
        self._forward = None
        self._runner = None
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
        config = fileio.read_json(self.path / runs.CONFIG_FILE) if (self.path / runs.CONFIG_FILE).is_file() else {}
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
        size = self.spec.get("input_size") or self.config.get("image_size")
        if size is None:
            shape = self.members[0].inputs[0].shape
            return int(shape[1]), int(shape[2])
        if isinstance(size, (list, tuple)):
            return int(size[0]), int(size[1])
        return int(size), int(size)

    @property
    def channels(self) -> int:
        channels = self.spec.get("channels") or self.config.get("channels")
        if channels is None:
            return int(self.members[0].inputs[0].shape[-1])
        return int(channels)

    @property
    def threshold(self) -> float:
        """The operating threshold on predict_proba's (calibrated) scale."""
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
            "validation": metrics.get("validation"),
            "validation_ci95": metrics.get("validation_ci95"),
            "stress": metrics.get("stress"),
            "calibration": metrics.get("calibration"),
        }

    # ------------------------------------------------------------------ networks

    @property
    def members(self) -> list:
        """The Keras networks (one, or an ensemble's members), loaded on first use."""
        if self._members is None:
            with self._lock:
                if self._members is None:
                    self._members = [runs.load_model_file(p) for p in self._member_files]
        return self._members

    @property
    def output_units(self) -> int:
        return int(self.members[0].outputs[0].shape[-1])

    def preprocess(self, img: np.ndarray) -> np.ndarray:
        """A decoded gray image (2-D uint8, any size) -> this model's input (h, w, c) float32 0..255."""
        from xray_core import imaging

        return imaging.to_model_input(img, self.input_size, channels=self.channels)

    def prepare_batch(self, images: Sequence[np.ndarray]) -> np.ndarray:
        h, w = self.input_size
        if len(images) == 0:
            return np.zeros((0, h, w, self.channels), np.float32)
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

    def _compiled_forward(self):
        """The one compiled forward pass: (n, k) P(pneumonia) of each member and (n, d) penultimate
        features averaged over members, from a single run of each network."""
        if self._forward is None:
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

            self._forward = forward
        return self._forward

    def _run_forward(self):
        """What runs _compiled_forward on this machine: its LiteRT program on a CPU (faster, same
        outputs within 1e-5), or the tf.function itself with a GPU or XRAY_BACKEND=tensorflow."""
        with self._runner_lock:
            if self._runner is None:
                from xray_core import litert

                forward = self._compiled_forward()
                if litert.chosen_backend() == "litert":
                    from xray_core.data import default_cache_dir

                    h, w = self.input_size
                    program = litert.load_or_convert(forward, self._member_files, f"{h}x{w}x{self.channels}",
                                                     default_cache_dir())
                    self._runner, self.backend = litert.Program(program), "litert"
                else:
                    self._runner, self.backend = forward, "tensorflow"
            return self._runner

    def raw_member_proba_and_features(self, x: Any, *, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """((n, k) uncalibrated P(pneumonia) of each member, (n, d) penultimate features averaged
        over members) from one forward pass: what batch scoring and the input gate need together.
        The one place networks are called; `raw_member_proba` and `features` are its two halves."""
        x = self._as_batch(x)
        if len(x) == 0:
            return np.zeros((0, self.n_members), np.float64), np.zeros((0, 0), np.float32)
        forward = self._run_forward()
        probs, feats = [], []
        for i in range(0, len(x), batch_size):
            p, f = forward(x[i : i + batch_size])
            probs.append(np.asarray(p))
            feats.append(np.asarray(f))
        return np.concatenate(probs, axis=0).astype(np.float64), np.concatenate(feats, axis=0).astype(np.float32)

    def raw_member_proba(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """(n, k) uncalibrated P(pneumonia) of each member."""
        return self.raw_member_proba_and_features(x, batch_size=batch_size)[0]

    def head_outputs(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """(n, units) raw outputs of the first member's head (both columns of the seed's 2-unit
        heads): only for the seed's micro-averaged recall, which reads the NORMAL column too."""
        x = self._as_batch(x)
        net = self.members[0]
        parts = [np.asarray(net(x[i : i + batch_size], training=False)) for i in range(0, len(x), batch_size)]
        return np.concatenate(parts, axis=0).astype(np.float64) if parts else np.zeros((0, self.output_units))

    def member_proba(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """(n, k) calibrated P(pneumonia) of each member (for the ensemble's spread)."""
        return calibrate(self.raw_member_proba(x, batch_size=batch_size), self.temperature, self.bias)

    def predict_proba(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """(n,) calibrated P(pneumonia): mean of the members, then temperature scaling."""
        raw = self.raw_member_proba(x, batch_size=batch_size)
        return calibrate(raw.mean(axis=1), self.temperature, self.bias)

    def predict(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """(n,) verdicts: 1 = PNEUMONIA where predict_proba >= threshold, else 0 = NORMAL."""
        return (self.predict_proba(x, batch_size=batch_size) >= self.threshold).astype(int)

    def features(self, x: Any, *, batch_size: int = 256) -> np.ndarray:
        """(n, d) penultimate-layer activations (the input of each member's output layer),
        averaged over members: the space the input gate measures distance in."""
        return self.raw_member_proba_and_features(x, batch_size=batch_size)[1]


_CACHE: dict[tuple[str, float], Model] = {}
_CACHE_LOCK = threading.Lock()


def load_model(run: Any, *, root: str | os.PathLike | None = None, cache: bool = True) -> Model:
    """The Model of a run: a run id (looked up in the registry `root`), a path to a run folder
    (str or PathLike), or a `runs.Run`. Loaded models are cached per folder and model.json time,
    so a retrained run is reloaded."""
    if isinstance(run, Model):
        return run
    if isinstance(run, runs.Run):
        path = run.path
    else:
        path = runs.load_run(run, root=root).path
    path = Path(path).absolute()
    spec = path / SPEC_FILE
    stamp = max((p.stat().st_mtime for p in (spec, path / runs.MODEL_FILE) if p.is_file()), default=0.0)
    key = (str(path), stamp)
    if not cache:
        return Model(path)
    with _CACHE_LOCK:
        model = _CACHE.get(key)
        if model is None:
            model = Model(path)
            _CACHE[key] = model
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
