"""The case report: a real PDF (read back with pypdf) with the verdict, the run id and the images."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xray_core import case, report
from xray_core.model import load_model

PROJECT = Path(__file__).resolve().parents[1]


def film_file(dataset: Path, tmp_path: Path, name: str = "film.png", size: int = 160) -> Path:
    """A synthetic test film, enlarged so that the gate's size check lets it through."""
    src = sorted((dataset / "test" / "PNEUMONIA").iterdir())[0]
    img = Image.open(src).convert("L").resize((size, size), Image.BILINEAR)
    path = tmp_path / name
    img.save(path)
    return path


def pdf_text(data: bytes) -> tuple[str, int, int]:
    """(text, pages, images) of a PDF."""
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(data))
    text = "\n".join(page.extract_text() for page in reader.pages)
    images = sum(len(page.images) for page in reader.pages)
    return text, len(reader.pages), images


def test_report_holds_verdict_run_and_images(tiny_run, synthetic_dataset, tmp_path):
    runs_root, run_id = tiny_run
    model = load_model(runs_root / run_id)
    path = film_file(synthetic_dataset, tmp_path)
    data = report.report_for_file(model, path, num_samples=256)
    assert data.startswith(b"%PDF")
    text, pages, images = pdf_text(data)
    a = case.assess(model, path)
    assert a.in_distribution
    assert pages == 1
    assert f"Verdict: {a.verdict}" in text
    assert f"Probability of pneumonia: {a.probability:.3f}" in text
    assert f"Operating threshold: {a.threshold:.3f}" in text
    assert f"Run {run_id}" in text
    assert "Research software, not a medical device" in text
    assert "Kermany" in text
    assert images == 4  # the film, LIME pros and cons, LIME heatmap, Grad-CAM


def test_refused_image_has_no_verdict_unless_asked(tiny_run, tmp_path):
    runs_root, run_id = tiny_run
    model = load_model(runs_root / run_id)
    rgb = np.zeros((200, 200, 3), np.uint8)
    rgb[..., 1] = np.arange(200, dtype=np.uint8)[None, :]  # green: a photograph, not a film
    path = tmp_path / "photo.png"
    Image.fromarray(rgb).save(path)
    text, _, images = pdf_text(report.report_for_file(model, path, num_samples=128))
    assert "NOT a chest X-ray this model can read" in text
    assert "Verdict:" not in text and "No verdict is given" in text
    assert images == 1  # the image only, no explanation panels
    text, _, images = pdf_text(report.report_for_file(model, path, num_samples=128, show_anyway=True))
    assert "Verdict:" in text and "Shown anyway on request" in text and images == 4


def test_dicom_facts_in_the_report_and_no_patient_data(tiny_run, tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    runs_root, run_id = tiny_run
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("scan.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Roe^Richard", "MRN-998877", "20190305"
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "LATERAL"
    ds.PixelSpacing = [0.2, 0.2]
    ds.Rows, ds.Columns = 160, 160
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    y, x = np.mgrid[0:160, 0:160]
    ds.PixelData = (60 + 80 * np.exp(-((x - 80) ** 2) / 800)).astype(np.uint8).tobytes()
    path = tmp_path / "scan.dcm"
    ds.save_as(path, enforce_file_format=True)
    text, _, _ = pdf_text(report.report_for_file(load_model(runs_root / run_id), path, num_samples=128,
                                                 show_anyway=True))
    assert "ViewPosition LATERAL" in text and "lateral view" in text
    for secret in ("Roe", "Richard", "MRN-998877", "20190305"):
        assert secret not in text


@pytest.mark.slow
def test_cli_report_writes_the_pdf(tiny_run, synthetic_dataset, tmp_path):
    runs_root, run_id = tiny_run
    path = film_file(synthetic_dataset, tmp_path)
    out = tmp_path / "case.pdf"
    env = dict(os.environ, PYTHONPATH=str(PROJECT), XRAY_MODELS_DIR=str(runs_root))
    proc = subprocess.run([sys.executable, "-m", "xray_core", "report", run_id, str(path), "--out", str(out),
                           "--samples", "128"], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    text, pages, images = pdf_text(out.read_bytes())
    assert f"Run {run_id}" in text and "Verdict:" in text and pages == 1 and images == 4
    bad = subprocess.run([sys.executable, "-m", "xray_core", "report", run_id, str(tmp_path / "none.png"),
                          "--out", str(tmp_path / "x.pdf")], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and not (tmp_path / "x.pdf").exists()
    # the dashboard's design takes powers of two: another count is a sentence, not a traceback
    odd = subprocess.run([sys.executable, "-m", "xray_core", "report", run_id, str(path), "--out",
                          str(tmp_path / "y.pdf"), "--samples", "100"], env=env, capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert odd.returncode == 1 and "power of two" in odd.stderr and "Traceback" not in odd.stderr
    assert not (tmp_path / "y.pdf").exists()
