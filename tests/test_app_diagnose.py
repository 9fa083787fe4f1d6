"""AppTest of the Diagnose page: upload -> prediction and panels; bad files; DICOM; privacy."""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from tests.apptest_helpers import APP, open_page
from xray_core import imaging, runs, ui

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


@pytest.fixture
def diagnose(monkeypatch, synthetic_dataset, tiny_run):
    runs_root, _ = tiny_run
    at = open_page(monkeypatch, synthetic_dataset, runs_root, timeout=180)  # Diagnose: the default page
    at.select_slider(key="diagnose_samples").set_value(250)  # enough for tiny images, and quick
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def test_upload_shows_prediction_panels_then_error_then_works_again(diagnose, synthetic_dataset, tiny_run):
    at = diagnose
    runs_root, run_id = tiny_run
    assert at.selectbox(key="diagnose_run").value == run_id  # the newest completed run
    name, raw = image_bytes(synthetic_dataset, "test", "PNEUMONIA")
    at.file_uploader(key="diagnose_upload").set_value((name, raw, "image/jpeg")).run()
    assert not at.exception, at.exception
    probability = expected_probability(runs_root, run_id, raw)
    threshold = runs.load_run(run_id, root=runs_root).threshold
    assert metric(at, "Probability of pneumonia") == f"{probability:.3f}"
    assert metric(at, "Operating threshold") == f"{threshold:.3f}"
    assert metric(at, "Prediction") == ("PNEUMONIA" if probability >= threshold else "NORMAL")
    validation = runs.load_run(run_id, root=runs_root).metrics["validation"]
    assert metric(at, "Validation sensitivity") == f"{validation['sensitivity']:.3f}"
    assert metric(at, "Validation specificity") == f"{validation['specificity']:.3f}"
    assert len(at.image) == 5  # the four LIME panels and Grad-CAM
    titles = [m.value for m in at.markdown]
    for title in ui.PANEL_TITLES.values():
        assert f"**{title}**" in titles
    assert at.get("download_button"), "the result download is offered"

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
    at.file_uploader(key="diagnose_upload").set_value((name, raw, "image/jpeg")).run()
    assert not at.exception and not at.error
    assert metric(at, "Probability of pneumonia") == f"{expected_probability(runs_root, run_id, raw):.3f}"


def test_dicom_upload_and_dataset_pick(diagnose, synthetic_dataset, tiny_run):
    at = diagnose
    runs_root, run_id = tiny_run
    name, raw = image_bytes(synthetic_dataset, "val", "PNEUMONIA")
    pixels = imaging.decode(raw)
    dicom = dicom_bytes(pixels)
    at.file_uploader(key="diagnose_upload").set_value(("scan.dcm", dicom, "application/dicom"))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert metric(at, "Probability of pneumonia") == f"{expected_probability(runs_root, run_id, dicom):.3f}"

    at.radio(key="diagnose_source").set_value("Pick from the dataset").run()
    at.selectbox(key="diagnose_split").set_value("test")
    at.selectbox(key="diagnose_class").set_value("NORMAL").run()
    chosen = at.selectbox(key="diagnose_file").value
    assert not at.exception
    raw = (synthetic_dataset / "test" / "NORMAL" / chosen).read_bytes()
    assert metric(at, "Probability of pneumonia") == f"{expected_probability(runs_root, run_id, raw):.3f}"


def test_result_zip_holds_the_panels_and_json(synthetic_dataset, tiny_run):
    runs_root, run_id = tiny_run
    run = runs.load_run(run_id, root=runs_root)
    img = imaging.decode(image_bytes(synthetic_dataset, "test", "PNEUMONIA")[1])
    result = ui.diagnose(run, img, num_samples=100, seed=1)
    archive = zipfile.ZipFile(io.BytesIO(ui.result_zip(result["panels"], result["summary"])))
    names = sorted(archive.namelist())
    assert names == sorted(f"{k}.png" for k in ("full", "partial", "pros_cons", "heatmap", "gradcam")) + ["result.json"]
    summary = json.loads(archive.read("result.json"))
    assert summary["prediction"] == result["prediction"] and summary["run_id"] == run_id
    assert summary["lime"]["num_samples"] == 100 and summary["settings"]["seed"] == 1
    assert archive.read("full.png").startswith(b"\x89PNG")


def _files(folder: Path) -> set[str]:
    skip = {".git", "__pycache__", ".pytest_cache", "test-artifacts"}
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not skip.intersection(p.relative_to(folder).parts)}


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
    before_project, before_models = _files(PROJECT), _files(models)

    at = AppTest.from_file(APP, default_timeout=180)
    at.run()
    at.select_slider(key="diagnose_samples").set_value(250)
    at.file_uploader(key="diagnose_upload").set_value((name, raw, "image/jpeg")).run()
    assert not at.exception and not at.error and len(at.image) == 5
    at.file_uploader(key="diagnose_upload").set_value(("cut.jpg", raw[:200], "image/jpeg")).run()
    assert at.error and not at.exception

    assert _files(models) == before_models
    assert sorted(p.name for p in private_tmp.rglob("*")) == []
    assert _files(PROJECT) - before_project == set()
