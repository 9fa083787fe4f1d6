"""One inference engine: every probability a user sees is Model.forward's, and a verdict needs no
TensorFlow.

The films are PNGs (no JPEG draft decoding), so every path decodes the same pixels: the CLI's
`predict`, the `score` CSV (which the Worklist page shows), Diagnose, the PDF report, `evaluate`
and Compare's test-split scores must all give Model.forward's calibrated probability within 1e-6.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xray_core import imaging
from xray_core.model import load_model

ROOT = Path(__file__).resolve().parents[1]


def film(seed: int, size: int = 256) -> np.ndarray:
    """A film-like gray image: a bright mediastinum, darker lungs, noise (seeded)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    img = 70 + 90 * np.exp(-((xx - 0.5) ** 2) / 0.01) + 40 * yy + 25 * np.sin(9 * xx + seed)
    return np.clip(img + rng.normal(0, 10, img.shape), 0, 255).astype(np.uint8)


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def films(tmp_path_factory) -> list[Path]:
    """Three films as PNG: real ones (the official val folder, both classes) where the data is
    present, so that the probabilities differ; film-like synthetic ones elsewhere."""
    from tests.conftest import REAL_DATA

    folder = tmp_path_factory.mktemp("films")
    real = sorted((REAL_DATA / "val").rglob("*.jpeg"))[::5][:3] if REAL_DATA.is_dir() else []
    paths = []
    for i in range(3):
        img = imaging.resize(imaging.decode(real[i]), (320, 384)) if real else film(i)
        path = folder / f"film-{i}.png"
        path.write_bytes(png_bytes(img))
        paths.append(path)
    return paths


def expected(paths: list[Path]) -> np.ndarray:
    """Model.forward's calibrated probabilities of the decoded files (they must differ where the
    films are real, or agreeing on them would prove little)."""
    from tests.conftest import REAL_DATA

    model = load_model("default", root=ROOT / "trained_models")
    p = model.forward(model.prepare_batch([imaging.decode(path) for path in paths])).proba
    assert len(p) < 2 or not REAL_DATA.is_dir() or np.ptp(p) > 0.01, p
    return p


def test_a_verdict_imports_neither_tensorflow_nor_keras(films):
    """`python -m xray_core predict default IMG` in a fresh interpreter: -X importtime lists every
    module it imported."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "xray_core", "predict", "default", str(films[0]),
                           "--json", "--runs-dir", str(ROOT / "trained_models")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "xray_core.model" in imported and "ai_edge_litert" in imported  # the listing works
    heavy = sorted(m for m in imported if m.split(".")[0] in ("tensorflow", "keras", "tf_keras"))
    assert heavy == [], heavy[:10]
    assert json.loads(proc.stdout.splitlines()[0])["probability"] == pytest.approx(expected(films[:1])[0], abs=1e-6)


def test_the_cli_and_the_score_csv_give_the_models_probability(films, tmp_path, capsys):
    from xray_core import cli, scoring

    want = expected(films)
    assert cli.main(["predict", "default", *map(str, films), "--json", "--runs-dir", str(ROOT / "trained_models")]) == 0
    got = [json.loads(line)["probability"] for line in capsys.readouterr().out.splitlines()]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    out = tmp_path / "scores.csv"
    scoring.score("default", films[0].parent, out, root=ROOT / "trained_models", workers=0, progress=False)
    table = scoring.read_scores(out).sort_values("path")
    np.testing.assert_allclose(table["probability"].astype(float).to_numpy(), want, rtol=0, atol=1e-6)


def test_evaluate_and_compares_test_split_give_the_models_probability(films, tmp_path):
    """A dataset folder whose test split is the films: Compare's cached test-split scores and
    evaluation's split scores come from the one assessment."""
    from app import compare_view
    from xray_core import evaluation, runs

    root = tmp_path / "chest_xray"
    for split in ("train", "test"):
        for k, cls in enumerate(("NORMAL", "PNEUMONIA")):
            (root / split / cls).mkdir(parents=True)
    names = []
    for i, path in enumerate(films):
        name = f"IM-00{i}0-0001.png"
        (root / "test" / "NORMAL" / name).write_bytes(path.read_bytes())
        names.append(name)
    (root / "train" / "NORMAL" / "IM-0999-0001.png").write_bytes(films[0].read_bytes())
    (root / "train" / "PNEUMONIA" / "person999_virus_1.png").write_bytes(films[1].read_bytes())
    want = dict(zip(names, expected(films)))
    info = runs.load_run("default", root=ROOT / "trained_models")
    frame = compare_view.score_test_split(info, root, tmp_path / "cache")
    for path, score in zip(frame["path"], frame["score"]):
        assert score == pytest.approx(want[Path(path).name], abs=1e-6)
    _, scores, _ = evaluation.predict_split(info, str(root), "test", write=False)
    np.testing.assert_allclose(sorted(scores), sorted(want.values()), rtol=0, atol=1e-6)


@pytest.mark.slow
def test_diagnose_and_the_report_show_the_models_probability(films, monkeypatch, tmp_path):
    """Diagnose (its session's assessment, and the metric it shows) and the PDF report (its text)."""
    from pypdf import PdfReader

    from tests.apptest_helpers import open_page
    from xray_core import report

    want = expected(films[:1])[0]
    at = open_page(monkeypatch, tmp_path, ROOT / "trained_models", timeout=240)
    at.selectbox(key="diagnose_run").set_value("default").run()
    at.select_slider(key="diagnose_samples").set_value(128)
    at.file_uploader(key="diagnose_upload").set_value(("film.png", films[0].read_bytes(), "image/png")).run()
    assert not at.exception, at.exception
    (assessment,) = at.session_state["diagnose_assessed"].values()
    assert assessment.probability == pytest.approx(want, abs=1e-6)
    pdf = report.report_for_file(load_model("default", root=ROOT / "trained_models"), films[0], num_samples=128)
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages)
    assert f"Probability of pneumonia: {want:.3f}" in text


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_an_exported_run_gives_the_models_probability(fmt, films, tmp_path):
    """`xray export` (TensorFlow converts): the file alone, run by ONNX Runtime or LiteRT, gives
    Model.forward's probability; its model.json says what to feed it."""
    from xray_core import cli, export

    out = tmp_path / "exported"
    assert cli.main(["export", "default", "--format", fmt, "--out-dir", str(out), "--runs-dir",
                     str(ROOT / "trained_models")]) == 0
    card = json.loads((out / "model.json").read_text())
    assert card["input"]["shape"] == ["N", 192, 192, 1] and card["classes"] == ["NORMAL", "PNEUMONIA"]
    assert card["threshold"] == load_model("default", root=ROOT / "trained_models").threshold
    model = load_model("default", root=ROOT / "trained_models")
    x = model.prepare_batch([imaging.decode(p) for p in films])
    runner = export._run_onnx if fmt == "onnx" else export._run_litert
    # float32 kernels of another runtime: ONNX Runtime sums in another order than LiteRT's XNNPACK
    np.testing.assert_allclose(runner(out / export.FORMATS[fmt], x), expected(films), rtol=0, atol=3e-5)


@pytest.mark.slow
def test_the_readmes_onnx_snippet_scores_a_png(films, tmp_path):
    """The README's ONNX Runtime lines, run as written from a folder holding exported/ and film.png."""
    import re

    from xray_core import export

    export.export("default", fmt="onnx", out=tmp_path / "exported", root=ROOT / "trained_models")
    readme = (ROOT / "README.md").read_text()
    snippet = re.search(r"```python\n(import json\n.*?onnxruntime.*?)```", readme, re.S).group(1)
    assert len(snippet.strip().splitlines()) <= 15
    (tmp_path / "film.png").write_bytes(films[0].read_bytes())
    proc = subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    verdict, p = proc.stdout.split()
    want = expected(films[:1])[0]
    assert float(p) == pytest.approx(want, abs=1e-4)
    assert verdict == load_model("default", root=ROOT / "trained_models").verdict(want)


def test_an_unknown_export_format_is_refused():
    from xray_core import export

    with pytest.raises(export.ExportError, match="onnx, litert"):
        export.export("default", fmt="torchscript", out="unused", root=ROOT / "trained_models")


def test_a_stack_at_size_is_prepared_as_each_image_is():
    """prepare_batch's shortcut for a uint8 stack already at the input size (the scorer's decoded
    chunks) gives preprocess's values, for one channel and for three."""
    import copy

    model = load_model("default")
    h, w = model.input_size
    three = copy.copy(model)
    three.__class__ = type("ThreeChannels", (type(model),), {"channels": property(lambda self: 3)})
    stack = np.stack([film(i, size=max(h, w))[:h, :w] for i in range(3)])
    for m in (model, three):
        x = m.prepare_batch(stack)
        assert x.shape == (3, h, w, m.channels) and x.dtype == np.float32
        np.testing.assert_array_equal(x, np.stack([m.preprocess(im) for im in stack]))
        np.testing.assert_array_equal(x, m.prepare_batch(list(stack)))
