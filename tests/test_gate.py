"""The input gate: fitted on synthetic films here, on the real default run where the data is present."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import REAL_DATA, SHARED_DATA, requires_real_data
from tests.synthetic import _image
from xray_core import gate, imaging
from xray_core.model import load_model


def film(rng, label, size=128):
    """A synthetic 'film': a bright centre column (spine) between two darker fields (lungs)."""
    img = _image(rng, label, size).astype(np.float32)
    x = np.arange(size)
    img += 60 * np.exp(-((x - size / 2) ** 2) / (2 * (size / 14) ** 2))[None, :]
    img[: size // 5] *= 0.6  # a darker top edge, so upside down is not the same picture
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def fitted(tiny_run, tmp_path_factory):
    """The tiny run's model and a gate fitted on 300 synthetic films (thresholds on 100 others)."""
    runs_root, run_id = tiny_run
    model = load_model(runs_root / run_id)
    rng = np.random.default_rng(1)
    films = [film(rng, i % 2) for i in range(400)]
    x = model.prepare_batch(films)
    g = gate.fit_gate(model, x[:300], x[300:], save=False)
    return model, g, films


def png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def test_new_films_pass_and_corruptions_are_flagged(fitted):
    model, g, _ = fitted
    rng = np.random.default_rng(99)  # films the fit never saw
    new = [film(rng, i % 2) for i in range(40)]
    passed = [r.in_distribution for r in gate.check_batch(model, new, gate=g)]
    assert np.mean(passed) >= 0.9
    flagged = {
        "inverted": [255 - f for f in new[:10]],
        "upside down": [np.rot90(f, 2).copy() for f in new[:10]],
        "noise": [rng.integers(0, 256, (128, 128), dtype=np.uint8) for _ in range(10)],
    }
    for name, images in flagged.items():
        results = gate.check_batch(model, images, gate=g)
        assert np.mean([not r.in_distribution for r in results]) >= 0.9, name


def test_inverted_film_says_so(fitted):
    model, g, films = fitted
    res = gate.check(model, 255 - films[0], gate=g)
    assert not res.in_distribution
    assert any("inverted" in w for w in res.warnings)
    assert res.ood_score is not None and res.ood_score > 1.0


def test_simple_checks_each_give_their_sentence(fitted):
    model, g, films = fitted
    flat = gate.check(model, np.full((300, 300), 120, np.uint8), gate=g)
    assert not flat.in_distribution and any("uniform" in w for w in flat.warnings)
    small = gate.check(model, films[0][:40, :40].copy(), gate=g)
    assert not small.in_distribution and any("40 x 40" in w for w in small.warnings)
    strip = gate.check(model, np.tile(films[0], (1, 4)), gate=g)
    assert not strip.in_distribution and any("longer than it is wide" in w for w in strip.warnings)
    coloured = gate.check(model, films[0], saturation=0.4, gate=g)
    assert not coloured.in_distribution and any("colour" in w for w in coloured.warnings)
    plain = gate.check(model, films[1], saturation=0.0, gate=g)
    assert plain.in_distribution, plain.warnings
    assert plain.warnings == []


def test_colour_is_measured_before_the_gray_conversion():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[..., 0] = 200  # red
    gray_rgb = np.repeat(np.arange(64, dtype=np.uint8)[None, :, None] * 3, 64, axis=0).repeat(3, axis=2)
    assert imaging.colour_saturation(png(rgb)) == 1.0
    assert imaging.colour_saturation(png(gray_rgb)) == 0.0  # RGB file, gray content: a film exported as RGB
    assert imaging.decode(png(rgb)).ndim == 2


def test_dicom_facts_and_warnings_without_patient_data(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileMetaDataset

    ds = pydicom.Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "SECRET-ID-123"
    ds.PatientBirthDate = "19800101"
    ds.Modality = "CT"
    ds.BodyPartExamined = "HEAD"
    ds.ViewPosition = "LATERAL"
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelSpacing = [0.5, 0.5]
    ds.Rows, ds.Columns = 32, 32
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PixelData = (np.arange(32 * 32) % 256).astype(np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX image
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    facts = imaging.dicom_facts(path.read_bytes())
    assert facts["Modality"] == "CT" and facts["ViewPosition"] == "LATERAL"
    assert facts["PixelSpacing"] == [0.5, 0.5]
    text = repr(facts)
    for secret in ("Doe", "SECRET-ID-123", "19800101"):
        assert secret not in text
    warnings = gate.dicom_warnings(facts)
    assert len(warnings) == 3
    assert "CT" in warnings[0] and "HEAD" in warnings[1] and "lateral" in warnings[2]
    assert imaging.dicom_facts(png(np.zeros((8, 8), np.uint8))) is None


def test_no_fitted_gate_says_so(tiny_run):
    runs_root, run_id = tiny_run
    model = load_model(runs_root / run_id)
    res = gate.check(model, film(np.random.default_rng(0), 0))
    assert res.ood_score is None
    assert any("no fitted input gate" in w for w in res.warnings)


def test_saved_gate_loads_with_the_same_answers(fitted, tmp_path):
    model, g, films = fitted
    g.save(tmp_path)
    again = gate.load_gate(tmp_path)
    a = gate.check(model, 255 - films[3], gate=g)
    b = gate.check(model, 255 - films[3], gate=again)
    assert a.ood_score == pytest.approx(b.ood_score, rel=1e-4)
    assert gate.load_gate(tmp_path / "nowhere") is None


def test_too_few_films_to_fit_is_a_sentence(fitted):
    model, _, films = fitted
    x = model.prepare_batch(films[:10])
    with pytest.raises(gate.GateError, match="at least 50 training"):
        gate.fit_gate(model, x, x, save=False)


# ----------------------------------------------------------------------------- the shipped gate


@requires_real_data
def test_default_gate_passes_originals_and_refuses_a_photo_and_an_inverted_film():
    model = load_model("default")
    assert gate.load_gate(model.path) is not None, "trained_models/default has no gate.npz"
    originals = sorted((SHARED_DATA / "originals").rglob("*.jpeg"))[:12]
    results = [gate.check_source(model, p.read_bytes(), p.name)[1] for p in originals]
    assert all(r.in_distribution for r in results), [r.warnings for r in results]
    skimage_data = pytest.importorskip("skimage.data")
    _, cat, _ = gate.check_source(model, png(skimage_data.chelsea()), "cat.png")
    assert not cat.in_distribution and any("colour" in w for w in cat.warnings)
    _, moon, _ = gate.check_source(model, png(skimage_data.moon()), "moon.png")
    assert not moon.in_distribution
    inverted = 255 - imaging.decode(originals[0])
    _, inv, _ = gate.check_source(model, png(inverted), "inv.png")
    assert not inv.in_distribution and any("inverted" in w for w in inv.warnings)


@requires_real_data
def test_default_knows_its_training_and_validation_files():
    from xray_core import evaluation, runs

    model = load_model("default")
    val_paths, _ = evaluation.validation_rows(runs.Run(model.path), str(REAL_DATA))
    held_out = {Path(p).name for p in val_paths}
    train_file = next(p for p in sorted((REAL_DATA / "train" / "NORMAL").glob("*.jpeg")) if p.name not in held_out)
    assert gate.seen_in(model.path, train_file.read_bytes()) == "training"
    assert gate.seen_in(model.path, Path(val_paths[-1]).read_bytes()) == "validation"
    test_files = sorted((REAL_DATA / "test" / "NORMAL").glob("*.jpeg"))
    if test_files:
        assert gate.seen_in(model.path, test_files[0].read_bytes()) is None
    assert gate.seen_in(model.path, b"not a film") is None
