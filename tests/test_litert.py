"""The CPU backend: a Model run by LiteRT gives TensorFlow's outputs, and is chosen as documented.

The shipped networks (the default ensemble and the seed's four architectures, two-output heads
included) are run on the same inputs by both backends; probabilities must agree within 1e-5, the gate's features within 1e-5
of their scale. Conversion is cached under XRAY_CACHE_DIR by the hash of the network files.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from xray_core import litert
from xray_core.model import ConversionNotice, Model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not litert.litert_available(), reason="ai_edge_litert is not installed")


def _inputs(model: Model, n: int) -> np.ndarray:
    """Film-like inputs: smooth gray gradients plus noise, prepared as the model prepares films."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:256, 0:256]
    images = [np.clip(90 + 0.4 * yy + 30 * np.sin(xx / (9 + k)) + rng.normal(0, 12, yy.shape), 0, 255).astype(np.uint8)
              for k in range(n)]
    return model.prepare_batch(images)


def _both(run: str, monkeypatch, n: int = 37):
    out = {}
    for backend in ("tensorflow", "litert"):
        monkeypatch.setenv(litert.ENV, backend)
        model = Model(ROOT / "trained_models" / run)
        x = _inputs(model, n)
        scores = model.forward(x, batch_size=20)
        out[backend] = scores.raw, scores.features
        assert model.backend == backend
    return out


@pytest.mark.parametrize("run", ["default", "seed-baseline", "seed-model2", "seed-model3", "seed-model4"])
def test_litert_gives_tensorflows_outputs(run, monkeypatch):
    """Every shipped architecture converts, and gives the same numbers."""
    out = _both(run, monkeypatch, n=37 if run == "default" else 11)
    (p_tf, f_tf), (p_lite, f_lite) = out["tensorflow"], out["litert"]
    assert p_lite.shape == p_tf.shape and f_lite.shape == f_tf.shape
    assert np.abs(p_lite - p_tf).max() <= 1e-5
    assert np.abs(f_lite - f_tf).max() <= 1e-5 * max(1.0, float(np.abs(f_tf).max()))
    # the inputs are not all alike to the model, so agreement is not agreement on a constant
    assert np.ptp(p_tf[:, 0]) > 1e-3


def _copy_without_program(run: str, target: Path) -> Path:
    """A run folder as an older run has it: the networks and model.json, no networks.tflite."""
    import shutil

    from xray_core import fileio

    target.mkdir()
    for f in (ROOT / "trained_models" / run).iterdir():
        if f.suffix in (".keras", ".json") and f.name != "model.json":
            shutil.copy2(f, target / f.name)
    spec = fileio.read_json(ROOT / "trained_models" / run / "model.json")
    spec.pop("litert")
    fileio.atomic_write_json(target / "model.json", spec)
    return target


def test_a_run_without_a_program_is_converted_once_cached_and_told(tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(litert.ENV, "litert")
    folder = _copy_without_program("seed-model4", tmp_path / "old-run")
    model = Model(folder)
    with pytest.warns(ConversionNotice, match="converting it once"):
        p = model.predict_proba(_inputs(model, 2))
    cached = list((tmp_path / "cache" / "litert").glob("*.tflite"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    again = Model(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second notice: the cached program is used
        np.testing.assert_array_equal(again.predict_proba(_inputs(again, 2)), p)
    assert [q.stat().st_mtime_ns for q in (tmp_path / "cache" / "litert").glob("*.tflite")] == [stamp]
    # The shipped run's own program gives the same numbers as the converted one.
    shipped = Model(ROOT / "trained_models" / "seed-model4")
    np.testing.assert_allclose(shipped.predict_proba(_inputs(shipped, 2)), p, atol=1e-7)


def test_a_program_made_from_other_networks_is_not_used(tmp_path, monkeypatch):
    """model.json's litert key is the hash of the network files: a rewritten network makes the
    shipped program stale, and the run is converted anew instead of answering with old weights."""
    import shutil

    from xray_core import fileio

    monkeypatch.setenv("XRAY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(litert.ENV, "litert")
    folder = tmp_path / "run"
    shutil.copytree(ROOT / "trained_models" / "seed-model4", folder)
    spec = fileio.read_json(folder / "model.json")
    assert Model(folder).program_key() == spec["litert"]["key"]
    with open(folder / "model.keras", "ab") as f:  # same weights, different bytes: a different file
        f.write(b"\0")
    with pytest.warns(ConversionNotice):
        Model(folder).predict_proba(_inputs(Model(folder), 1))


def test_batches_split_into_chunks_keep_their_order(monkeypatch):
    """A batch larger than the program's chunk, with a tail, comes back row for row."""
    monkeypatch.setenv(litert.ENV, "litert")
    model = Model(ROOT / "trained_models" / "default")
    x = _inputs(model, litert.CHUNK + 5)
    whole = model.forward(x, batch_size=len(x)).raw
    one_by_one = np.concatenate([model.forward(x[i : i + 1]).raw for i in range(len(x))])
    assert np.abs(whole - one_by_one).max() <= 1e-6


def test_an_unknown_backend_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv(litert.ENV, "onnx")
    with pytest.raises(litert.BackendError, match="auto, litert, tensorflow"):
        litert.chosen_backend()


def test_tensorflow_can_be_asked_for(monkeypatch):
    monkeypatch.setenv(litert.ENV, "TensorFlow")
    assert litert.chosen_backend() == "tensorflow"


def test_auto_runs_litert_on_a_machine_without_a_gpu(monkeypatch):
    if litert.gpu_visible():
        pytest.skip("this machine has a GPU: auto keeps TensorFlow there")
    monkeypatch.delenv(litert.ENV, raising=False)
    assert litert.chosen_backend() == "litert"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert litert.gpu_visible() is False


def test_threads_follow_omp_num_threads_as_ray_sets_it(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert litert.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "not a number")
    assert litert.default_threads() == len(os.sched_getaffinity(0))
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert litert.default_threads() == len(os.sched_getaffinity(0))


def test_one_core_lanes_side_by_side_give_the_same_numbers(monkeypatch):
    """Batch scoring runs chunks on one-thread lanes from several threads at once: every batch
    comes back with the numbers the all-cores interpreter gives, row for row, whatever ran beside it."""
    from concurrent.futures import ThreadPoolExecutor

    monkeypatch.setenv(litert.ENV, "litert")
    model = Model(ROOT / "trained_models" / "default")
    batches = [_inputs(model, 11)[k:] for k in range(4)]
    alone = [model.forward(x).raw for x in batches]
    with ThreadPoolExecutor(2) as pool:
        side_by_side = list(pool.map(lambda x: model.forward(x, throughput=True).raw, batches))
    for a, b in zip(alone, side_by_side):
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-6
    assert model._lanes.threads == 1 and model._runner.threads == litert.default_threads()
