"""AppTest of the Diagnose page: upload -> prediction and panels; bad files; DICOM; privacy.

The explanation is computed by the server's explanation worker (a real process), so a test of the
panels (marked slow) reruns the page until they, or the sentence saying why there are none, are
shown; in the fast tier no worker starts (conftest) and the verdict stands alone.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.apptest_helpers import APP, open_page, wait_for
from app import diagnose_view as view
from xray_core import explain, imaging, runs
from xray_core.model import load_model

PROJECT = Path(__file__).resolve().parents[1]


def image_bytes(dataset: Path, split: str, class_name: str, i: int = 0) -> tuple[str, bytes]:
    path = sorted((dataset / split / class_name).iterdir())[i]
    return path.name, path.read_bytes()


def expected_probability(runs_root: Path, run_id: str, raw: bytes) -> float:
    from xray_core.model import load_model

    return float(load_model(run_id, root=runs_root).predict_proba([imaging.decode(raw)])[0])


def dicom_bytes(pixels: np.ndarray) -> bytes:
    """A minimal uncompressed MONOCHROME2 DICOM, written in memory with pydicom."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("scan.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def enlarged(raw: bytes, size: int = 160) -> bytes:
    """A synthetic 48 px film enlarged to a size the gate accepts, as PNG bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(imaging.decode(raw)).resize((size, size), Image.BILINEAR).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def diagnose(monkeypatch, synthetic_dataset, tiny_run):
    runs_root, _ = tiny_run
    at = open_page(monkeypatch, synthetic_dataset, runs_root, timeout=180)  # Diagnose: the default page
    at.select_slider(key="diagnose_samples").set_value(256)  # enough for tiny images, and quick
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def explained(at: AppTest, timeout: float = 240) -> AppTest:
    """Rerun the page until the explanation's five panels, or its refusal, are on it."""
    deadline = time.monotonic() + timeout
    while len(at.image) < 5 and not any(e.value.startswith("No explanation") for e in at.error):
        assert not at.exception, at.exception
        assert time.monotonic() < deadline, f"no explanation within {timeout:g} s"
        time.sleep(0.25)
        at.run()
    return at


@pytest.mark.slow  # the explanation worker computes the panels
def test_upload_shows_verdict_panels_then_error_then_works_again(diagnose, synthetic_dataset, tiny_run):
    at = diagnose
    runs_root, run_id = tiny_run
    assert at.selectbox(key="diagnose_run").value == run_id  # the newest completed run
    name, raw = image_bytes(synthetic_dataset, "test", "PNEUMONIA")
    raw = enlarged(raw)
    at.file_uploader(key="diagnose_upload").set_value(("film.png", raw, "image/png")).run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    probability = expected_probability(runs_root, run_id, raw)
    threshold = load_model(run_id, root=runs_root).threshold
    assert metric(at, "Probability of pneumonia") == f"{probability:.3f}"
    assert metric(at, "Operating threshold") == f"{threshold:.3f}"
    assert metric(at, "Prediction") == ("PNEUMONIA" if probability >= threshold else "NORMAL")
    from xray_core import uncertainty

    conformal = uncertainty.load_conformal(runs_root / run_id)  # fitted when the run was finalised
    assert conformal is not None
    assert metric(at, "90 % prediction set") == uncertainty.describe(probability, threshold, conformal).label
    captions = [c.value for c in at.caption]
    assert any(c.startswith("Validation split (") for c in captions)  # the figures, named
    assert sum("Research software, not a medical device" in c for c in captions) == 1  # the sidebar's, once
    assert any("no fitted input gate" in i.value for i in at.info)  # said, not hidden
    explained(at)
    assert len(at.image) == 5  # the four LIME panels and Grad-CAM
    titles = [m.value for m in at.markdown]
    for title in view.PANEL_TITLES.values():
        assert f"**{title}**" in titles
    assert any("probability of pneumonia" in c.value for c in at.caption)
    trust = [e for e in at.expander if e.label == view.TRUST_TITLE]
    assert len(trust) == 1 and view.trust_text() in [m.value for m in trust[0].markdown]  # said once
    assert sum("deletion area" in m.value for m in at.markdown) == 1
    labels = [b.label for b in at.get("download_button")]
    assert "Download report (PDF)" in labels

    # A text file renamed .png: the library's message, as an error, and no prediction.
    at.file_uploader(key="diagnose_upload").set_value(("notes.png", b"patient notes, not an image", "image/png"))
    at.run()
    assert not at.exception
    with pytest.raises(imaging.ImageDecodeError) as expected:
        imaging.decode(b"patient notes, not an image", filename="notes.png")
    assert [e.value for e in at.error] == [str(expected.value)]
    assert not at.metric

    # The next upload works.
    name, raw = image_bytes(synthetic_dataset, "test", "NORMAL")
    raw = enlarged(raw)
    at.file_uploader(key="diagnose_upload").set_value(("normal.png", raw, "image/png")).run()
    assert not at.exception and not at.error
    assert metric(at, "Probability of pneumonia") == f"{expected_probability(runs_root, run_id, raw):.3f}"


@pytest.mark.slow  # the explanation worker computes the panels
def test_unreadable_film_is_refused_until_asked(diagnose, synthetic_dataset, tiny_run):
    """A 48 px image: 'not a chest X-ray this model can read' with the reason, no verdict, no
    explanation; 'show anyway' reveals the output under a warning."""
    at = diagnose
    runs_root, run_id = tiny_run
    name, raw = image_bytes(synthetic_dataset, "test", "PNEUMONIA")
    at.file_uploader(key="diagnose_upload").set_value((name, raw, "image/jpeg")).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.startswith(f"**{view.REFUSED_TITLE}.**")
    assert "48 x 48 pixels" in at.error[0].value
    assert not at.metric and len(at.image) == 0
    at.toggle(key="diagnose_show_anyway").set_value(True).run()
    assert not at.exception
    assert any("not made for this image" in w.value for w in at.warning)
    assert metric(at, "Probability of pneumonia") == f"{expected_probability(runs_root, run_id, raw):.3f}"
    explained(at)
    assert len(at.image) == 5


def test_with_explanations_switched_off_the_verdict_stands_alone(monkeypatch, synthetic_dataset, tiny_run):
    """explain_workers = 0 (XRAY_MAX_EXPLAIN_WORKERS): the verdict, a sentence saying so, no panels
    and no job asked of the workers."""
    monkeypatch.setenv("XRAY_MAX_EXPLAIN_WORKERS", "0")
    runs_root, run_id = tiny_run
    at = open_page(monkeypatch, synthetic_dataset, runs_root, timeout=180)
    # before a film: the verdict's row, empty
    assert [(m.label, m.value) for m in at.metric] == [(label, view.NO_FILM) for label in view.VERDICT_LABELS]
    _, raw = image_bytes(synthetic_dataset, "test", "PNEUMONIA")
    at.file_uploader(key="diagnose_upload").set_value(("film.png", enlarged(raw), "image/png")).run()
    assert not at.exception and not at.error
    assert [m.label for m in at.metric] == list(view.VERDICT_LABELS)  # the film's row in place of the empty one
    assert view.NO_FILM not in [m.value for m in at.metric]
    assert view.EXPLANATIONS_OFF in [i.value for i in at.info]
    assert len(at.image) == 0 and not at.get("progress")
    assert "diagnose_explain_key" not in at.session_state  # no explanation was asked for


@pytest.mark.slow  # an explanation worker starts, and ends
def test_explanations_switched_off_on_a_running_server_end_its_workers(diagnose, monkeypatch):
    """explain_workers set to 0 while the server runs (its settings file or environment): at the
    next page run the worker that was warming the model ends; set to 1 again, one starts."""
    from xray_core.serving import service

    at = diagnose
    running = service.existing()
    assert running is not None
    pids = wait_for(running.worker_pids, timeout=120)  # Diagnose warms a worker as soon as a model is picked
    monkeypatch.setenv("XRAY_MAX_EXPLAIN_WORKERS", "0")
    at.run()
    assert not at.exception
    wait_for(lambda: not any(map(runs.pid_alive, pids)), timeout=120)  # ended
    assert running.worker_pids() == []
    monkeypatch.setenv("XRAY_MAX_EXPLAIN_WORKERS", "1")
    at.run()  # switched on again: a worker warms the model anew
    assert not at.exception and wait_for(running.worker_pids, timeout=120)


def test_dicom_upload_shows_its_facts_and_dataset_pick(diagnose, synthetic_dataset, tiny_run):
    at = diagnose
    runs_root, run_id = tiny_run
    name, raw = image_bytes(synthetic_dataset, "val", "PNEUMONIA")
    from PIL import Image

    pixels = np.asarray(Image.fromarray(imaging.decode(raw)).resize((160, 160)))
    dicom = dicom_bytes(pixels)
    at.file_uploader(key="diagnose_upload").set_value(("scan.dcm", dicom, "application/dicom"))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert metric(at, "Probability of pneumonia") == f"{expected_probability(runs_root, run_id, dicom):.3f}"
    table = at.dataframe[0].value
    facts = dict(zip(table["DICOM attribute"], table["value"]))
    assert facts["modality"] == "DX" and facts["photometric interpretation"] == "MONOCHROME2"

    at.radio(key="diagnose_source").set_value("Pick from the dataset").run()
    at.selectbox(key="diagnose_split").set_value("test")
    at.selectbox(key="diagnose_class").set_value("NORMAL").run()
    assert not at.exception
    assert at.error and at.error[0].value.startswith(f"**{view.REFUSED_TITLE}.**")  # 48 px dataset films


def test_result_zip_holds_the_panels_and_json(synthetic_dataset, tiny_run):
    from xray_core import case

    runs_root, run_id = tiny_run
    model = load_model(run_id, root=runs_root)
    raw = enlarged(image_bytes(synthetic_dataset, "test", "PNEUMONIA")[1])
    a = case.assess(model, raw, "film.png")
    result = explain.explain_film(model, a.image, num_samples=128, segmentation="slic", seed=1)
    given = {**view.summary(a), **view.explained_summary(result)}
    archive = zipfile.ZipFile(io.BytesIO(view.result_zip(result.panels, given)))
    names = sorted(archive.namelist())
    assert names == sorted(f"{k}.png" for k in ("full", "partial", "pros_cons", "heatmap", "gradcam")) + ["result.json"]
    summary = json.loads(archive.read("result.json"))
    assert summary["label"] == a.verdict and summary["run"] == run_id
    assert summary["lime"]["num_samples"] == 128 and summary["lime"]["seed"] == 1
    assert summary["lime"]["label_name"] == "PNEUMONIA"  # P(pneumonia) is explained, whatever the verdict
    assert archive.read("full.png").startswith(b"\x89PNG")


def _files(folder: Path) -> set[str]:
    skip = {".git", "__pycache__", ".pytest_cache", "test-artifacts"}
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(folder).parts)}


@pytest.mark.slow  # the explanation worker computes the panels
def test_diagnose_writes_nothing_to_disk(monkeypatch, synthetic_dataset, tiny_run, tmp_path):
    """After an upload, its explanation and a bad upload: no new file in the project, the models
    folder or the temporary folder (pointed at an empty private one for this test)."""
    runs_root, run_id = tiny_run
    models = tmp_path / "models"
    shutil.copytree(runs_root / run_id, models / run_id)
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(name, str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    monkeypatch.setenv("XRAY_DATA_DIR", str(synthetic_dataset))
    monkeypatch.setenv("XRAY_MODELS_DIR", str(models))
    name, raw = image_bytes(synthetic_dataset, "test", "PNEUMONIA", 1)
    raw = enlarged(raw)
    before_project, before_models = _files(PROJECT), _files(models)

    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.select_slider(key="diagnose_samples").set_value(256)
    at.file_uploader(key="diagnose_upload").set_value((name, raw, "image/jpeg")).run()
    explained(at)
    assert not at.exception and not at.error and len(at.image) == 5
    at.file_uploader(key="diagnose_upload").set_value(("cut.jpg", raw[:200], "image/jpeg")).run()
    assert at.error and not at.exception

    assert _files(models) == before_models
    assert sorted(p.name for p in private_tmp.rglob("*")) == []
    assert _files(PROJECT) - before_project == set()
