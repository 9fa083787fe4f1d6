"""A run out of the project: one self-contained ONNX or LiteRT file, and what it needs to be used.

The exported graph holds the members, their mean and the run's calibration, so a hospital's
platform (ONNX Runtime, Triton, a LiteRT app) runs it without xray_core or TensorFlow:

- input `image`: float32 [N, H, W, C], gray levels 0..255 at the run's size (the film decoded to
  gray, squashed to H x W with bilinear resampling, the gray copied into each of C channels);
- output `probability`: float32 [N], the calibrated P(pneumonia) that `Model.forward` gives.

`model.json` beside it states the threshold and its policy, the input, the classes and the
provenance (run, network hash, calibration, versions, date). The file is checked against
`Model.forward` on films of the run's size before it is kept.
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import numpy as np

from xray_core import fileio

FORMATS = {"onnx": "model.onnx", "litert": "model.tflite"}
OPSET = 17
TOLERANCE = 1e-4  # largest difference from Model.forward's probability an export may show
NOTICE = "Research software, not a medical device: not for clinical decisions."


class ExportError(ValueError):
    """An export that cannot be made or does not reproduce the model."""


def calibrated_function(model):
    """A tf.function: prepared batch [N, H, W, C] float32 -> [N] calibrated P(pneumonia), with the
    members, their mean and Platt scaling in the graph (the logit written with log, not log1p, which
    ONNX's opset 17 lacks)."""
    import tensorflow as tf

    forward = model.keras_forward()
    h, w = model.input_size
    temperature, bias = float(model.temperature), float(model.bias)
    eps = 1e-7

    @tf.function(input_signature=[tf.TensorSpec((None, h, w, model.channels), tf.float32, name="image")])
    def probability(image):
        members, _ = forward(image)
        p = tf.clip_by_value(tf.reduce_mean(members, axis=1), eps, 1.0 - eps)
        z = (tf.math.log(p) - tf.math.log(1.0 - p)) / temperature + bias
        return tf.identity(tf.math.sigmoid(z), name="probability")

    return probability


def _to_onnx(fn, target: Path) -> None:
    import tf2onnx

    from xray_core import quiet

    with quiet.filtered_stderr():
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=fn.input_signature, opset=OPSET)
    fileio.atomic_write_bytes(target, proto.SerializeToString())


def _run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.asarray(session.run(None, {name: x})[0], np.float64).reshape(-1)


def _run_litert(path: Path, x: np.ndarray) -> np.ndarray:
    from xray_core import litert

    return np.asarray(litert.Program(path.read_bytes())(x)[0], np.float64).reshape(-1)


def _check_films(model, n: int = 8) -> np.ndarray:
    """Film-like inputs at the model's size: smooth gradients, texture and noise (seeded)."""
    rng = np.random.default_rng(0)
    h, w = model.input_size
    yy, xx = np.mgrid[0:h, 0:w]
    films = [np.clip(80 + 0.5 * yy + 35 * np.sin(xx / (6 + k)) + rng.normal(0, 14, (h, w)), 0, 255).astype(np.uint8)
             for k in range(n)]
    return model.prepare_batch(films)


def export(run, *, fmt: str, out: str | os.PathLike, root: str | os.PathLike | None = None) -> dict:
    """Write a run as one self-contained file, `out`/model.onnx or model.tflite, and `out`/model.json.

    Parameters
    ----------
    run : str, os.PathLike, runs.Run or model.Model
        The run (an id in the models folder `root`, or a folder).
    fmt : {"onnx", "litert"}
    out : str or os.PathLike
        The folder to write into (created if needed).

    Returns
    -------
    dict
        The files written and the largest difference from `Model.forward` on the check films.

    Raises
    ------
    ExportError
        For an unknown format, or a file that does not reproduce the model (then nothing is kept).
    """
    from importlib.metadata import version

    from xray_core import __version__
    from xray_core.model import CLASSES, load_model

    if fmt not in FORMATS:
        raise ExportError(f"Unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}.")
    model = load_model(run, root=root)
    folder = Path(out)
    if folder.resolve() in (model.path.resolve(), Path(model.networks_dir).resolve()):
        raise ExportError(f"{folder} is the run's own folder: the export's model.json would replace the run's. "
                          "Give another --out-dir.")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / FORMATS[fmt]
    fn = calibrated_function(model)
    if fmt == "onnx":
        _to_onnx(fn, target)
    else:
        from xray_core import litert

        fileio.atomic_write_bytes(target, litert.convert(fn))
    x = _check_films(model)
    expected = model.forward(x).proba
    try:
        got = (_run_onnx if fmt == "onnx" else _run_litert)(target, x)
    except BaseException:
        target.unlink(missing_ok=True)  # an unchecked file is not kept
        raise
    worst = float(np.abs(got - expected).max())
    if not worst <= TOLERANCE:
        target.unlink(missing_ok=True)
        raise ExportError(f"The exported {fmt} file gives probabilities up to {worst:.2g} away from the model's "
                          f"(allowed {TOLERANCE:g}); nothing was kept. Report this with the run and versions.")
    h, w = model.input_size
    converter = (f"tf2onnx {version('tf2onnx')} (opset {OPSET})" if fmt == "onnx"
                 else f"tensorflow {version('tensorflow')}")
    card = {
        "file": target.name, "format": fmt, "notice": NOTICE,
        "input": {"name": "image", "dtype": "float32", "shape": ["N", h, w, model.channels], "layout": "NHWC",
                  "values": "gray levels 0..255 (not scaled: the graph rescales)",
                  "preprocessing": f"decode to 8-bit gray, squash to {w}x{h} (width x height) with bilinear "
                                   f"resampling ignoring the aspect ratio, copy the gray into {model.channels} "
                                   "channel(s)"},
        "output": {"name": "probability", "dtype": "float32", "shape": ["N"],
                   "meaning": "calibrated P(pneumonia): the ensemble's mean, Platt-scaled"},
        "classes": list(CLASSES),
        "threshold": model.threshold, "threshold_policy": model.threshold_policy,
        "rule": "PNEUMONIA when probability >= threshold, else NORMAL",
        "provenance": {"run": model.run_id, "members": model.n_members, "networks_key": model.program_key(),
                       "temperature": model.temperature, "bias": model.bias, "parent": model.spec.get("parent"),
                       "xray_core": __version__, "converter": converter,
                       "max_difference_from_model": worst,
                       "exported": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
        "data": "Trained on Kermany, Zhang & Goldbaum (2018), Mendeley Data V3, doi:10.17632/rscbjbr9sj.3, "
                "CC BY 4.0",
    }
    fileio.atomic_write_json(folder / "model.json", card)
    return {"run": model.run_id, "format": fmt, "file": str(target), "card": str(folder / "model.json"),
            "bytes": target.stat().st_size, "max_difference_from_model": worst}


def _cmd_export(args) -> int:
    import json
    import sys

    from xray_core.console import run_ref

    result = export(run_ref(args.run), fmt=args.format, out=args.out_dir, root=args.runs_dir)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"wrote {result['file']} ({result['bytes'] // 1024} KB) and {result['card']} for run {result['run']}; "
              f"largest difference from the model on the check films {result['max_difference_from_model']:.1e}",
              file=sys.stdout)
    return 0
