"""The input gate: fitted on synthetic films here, on the real default run where the data is present."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image
from sklearn.covariance import LedoitWolf

from tests.conftest import REAL_DATA, SHARED_DATA, requires_real_data
from tests.synthetic import _image
from xray_core import gate, gate_fit, imaging
from xray_core.model import load_model, write_spec


def film(rng, label, size=128):
    """A synthetic 'film': a bright centre column (spine) between two darker fields (lungs)."""
    img = _image(rng, label, size).astype(np.float32)
    x = np.arange(size)
    img += 60 * np.exp(-((x - size / 2) ** 2) / (2 * (size / 14) ** 2))[None, :]
    img[: size // 5] *= 0.6  # a darker top edge, so upside down is not the same picture
    return np.clip(img, 0, 255).astype(np.uint8)


def tiny_net_run(folder: Path, size: int = 32, seed: int = 0) -> Path:
    """A run folder holding a small seeded, untrained network (size x size x 1 -> 16 features -> 1
    output): the gate needs the model's penultimate features, not a good classifier."""
    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 1))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, strides=2, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(16, activation="tanh")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid")(x)
    keras.Model(inputs, outputs).save(folder / "model.keras")
    write_spec(folder, members=["model.keras"], input_size=(size, size), channels=1, threshold=0.5)
    return folder


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny network's model and a gate fitted on 300 synthetic films (thresholds on 100 others)."""
    model = load_model(tiny_net_run(tmp_path_factory.mktemp("gate") / "tiny-net"))
    rng = np.random.default_rng(1)
    films = [film(rng, i % 2) for i in range(400)]
    x = model.prepare_batch(films)
    g = gate_fit.fit_gate(model, x[:300], x[300:], save=False)
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


def test_colour_share_counts_chroma_above_twelve_percent():
    # chroma = max - min of R, G, B: 31 of 255 is above 0.12, 30 is not; half the pixels each way
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:4, :, 1] = 31
    rgb[4:, :, 2] = 30
    assert imaging._coloured_share(rgb) == 0.5
    rgb[4:, :, 0] = 255  # chroma 255 - 0 everywhere below
    assert imaging._coloured_share(rgb) == 1.0
    # 16-bit colour (a secondary-capture DICOM): the same scale, no uint8 wrap-around
    wide = np.zeros((2, 2, 3), np.uint16)
    wide[0, :, 0] = 300
    wide[1, :, 2] = 30
    assert imaging._coloured_share(wide) == 0.5


def test_dicom_facts_and_warnings_without_patient_data(tmp_path):
    path = ct_dicom(tmp_path, (np.arange(32 * 32) % 256).astype(np.uint8).reshape(32, 32))
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


def test_no_fitted_gate_says_so(tmp_path):
    model = load_model(tiny_net_run(tmp_path / "no-gate"))
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
        gate_fit.fit_gate(model, x, x, save=False)



def check_file(model, source, filename=None, **kw):
    """(decoded image, gate result, DICOM facts) of a file through the one assessment, case."""
    from xray_core import case

    film = case.read(source, filename)
    return film.image, case.assess_films(model, [film], **kw)[0].gate, film.dicom

# ----------------------------------------------------------------------------- the shipped gate


@requires_real_data
def test_default_gate_passes_originals_and_refuses_a_photo_and_an_inverted_film():
    model = load_model("default")
    assert gate.load_gate(model.path) is not None, "trained_models/default has no gate.npz"
    originals = sorted((SHARED_DATA / "originals").rglob("*.jpeg"))[:12]
    results = [check_file(model, p.read_bytes(), p.name)[1] for p in originals]
    assert all(r.in_distribution for r in results), [r.warnings for r in results]
    skimage_data = pytest.importorskip("skimage.data")
    _, cat, _ = check_file(model, png(skimage_data.chelsea()), "cat.png")
    assert not cat.in_distribution and any("colour" in w for w in cat.warnings)
    _, moon, _ = check_file(model, png(skimage_data.moon()), "moon.png")
    assert not moon.in_distribution
    inverted = 255 - imaging.decode(originals[0])
    _, inv, _ = check_file(model, png(inverted), "inv.png")
    assert not inv.in_distribution and any("inverted" in w for w in inv.warnings)


@requires_real_data
def test_default_knows_its_training_and_validation_files():
    from xray_core import runs, splits

    model = load_model("default")
    val_paths, _ = splits.validation_rows(runs.Run(model.path), str(REAL_DATA))
    held_out = {Path(p).name for p in val_paths}
    train_file = next(p for p in sorted((REAL_DATA / "train" / "NORMAL").glob("*.jpeg")) if p.name not in held_out)
    assert gate.seen_in(model.path, train_file.read_bytes()) == "training"
    assert gate.seen_in(model.path, Path(val_paths[-1]).read_bytes()) == "validation"
    test_files = sorted((REAL_DATA / "test" / "NORMAL").glob("*.jpeg"))
    if test_files:
        assert gate.seen_in(model.path, test_files[0].read_bytes()) is None
    assert gate.seen_in(model.path, b"not a film") is None


# ----------------------------------------------------------------------------- measurements, by hand

T = gate.THUMB * gate.THUMB


def halves(left, right, size=64):
    """A (1, size, size, 1) prepared batch: the left half at one gray level, the right at another."""
    x = np.full((1, size, size, 1), float(left), np.float32)
    x[:, :, size // 2:] = right
    return x


def test_thumbnails_are_box_averaged_and_standardised():
    th = gate.thumbnails(halves(0, 200))  # 64 px -> 32 px: each box is 2 x 2 of one level
    assert th.shape == (1, T)
    img = th.reshape(gate.THUMB, gate.THUMB)
    np.testing.assert_allclose(img[:, :16], -1.0)  # mean 100, standard deviation 100
    np.testing.assert_allclose(img[:, 16:], 1.0)
    # A single image without the batch axis, and a one-level step: divided by 1, not by its 0.5 spread.
    low = gate.thumbnails(halves(100, 101)[0]).reshape(gate.THUMB, gate.THUMB)
    np.testing.assert_allclose(low[:, :16], -0.5)
    np.testing.assert_allclose(low[:, 16:], 0.5)
    np.testing.assert_allclose(gate.thumbnails(np.full((1, 40, 40, 1), 77.0)), 0.0)


def test_thumbnails_of_whole_blocks_equal_pillows_box_filter():
    """Sizes THUMB divides take the block mean; others Pillow's box filter: the same thumbnails."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for size in (192, 224, 200):
        x = rng.integers(0, 256, (4, size, size, 1)).astype(np.float32)
        boxed = np.stack([np.asarray(Image.fromarray(img[..., 0], mode="F").resize((gate.THUMB, gate.THUMB),
                                                                                  Image.BOX), np.float64).ravel()
                          for img in x])
        expected = (boxed - boxed.mean(1, keepdims=True)) / np.maximum(boxed.std(1, keepdims=True), 1.0)
        np.testing.assert_allclose(gate.thumbnails(x), expected, atol=1e-5)


def test_intensity_stats_by_hand():
    levels = np.repeat([2.0, 3.0, 252.0, 253.0], 25).reshape(1, 10, 10, 1)  # sorted, 25 of each
    stats = gate.intensity_stats(levels)
    assert stats.shape == (1, 6)
    mean, std, p5, p50, p95, extremes = stats[0]
    assert mean == pytest.approx(127.5)
    assert std == pytest.approx(np.sqrt((125.5**2 + 124.5**2) / 2))
    assert (p5, p50, p95) == pytest.approx((2.0, 127.5, 253.0))
    assert extremes == pytest.approx(0.5)  # 2 and 253 count as pure black / white, 3 and 252 do not
    assert gate.intensity_stats(levels[0]).shape == (1, 6)  # one image without the batch axis


def test_intensity_stats_percentiles_equal_numpy_bit_for_bit():
    # Whole gray levels take the histogram path; it must give np.percentile's values exactly
    # (the gate's fitted ranges were read with np.percentile).
    rng = np.random.default_rng(3)
    films = [rng.integers(0, 256, (5, 48, 40, 1)),
             np.clip(np.round(rng.normal(90, 40, (5, 37, 29, 1))), 0, 255),
             np.repeat(rng.integers(0, 256, (5, 1, 1, 1)), 9, axis=1).repeat(9, axis=2),  # constant images
             rng.integers(250, 256, (3, 1, 7, 1))]  # 7 pixels: every quantile falls between two
    for x in films:
        x = x.astype(np.float32)
        flat = x[..., 0].reshape(len(x), -1)
        stats = gate.intensity_stats(x)
        np.testing.assert_array_equal(stats[:, 2:5], np.percentile(flat, [5, 50, 95], axis=1).T)
        np.testing.assert_array_equal(stats[:, 5], np.mean((flat <= 2) | (flat >= 253), axis=1))
    # Values that are not whole levels 0..255 go through np.percentile itself.
    odd = np.array([[-3.0, 0.5, 10.0, 300.0]], np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(gate.intensity_stats(odd)[0, 2:5], np.percentile(odd.ravel(), [5, 50, 95]))
    assert gate.intensity_stats(odd)[0, 5] == 0.75  # -3 and 0.5 count as black, 300 as white, 10 as neither


def _asymmetric(size=64):
    """An image no rotation or mirror maps onto itself: a bright top-left corner block and a ramp."""
    img = np.tile(np.linspace(0, 120, size, dtype=np.float32), (size, 1))
    img[: size // 4, : size // 3] = 250
    return img


def test_orientation_scores_find_the_turn_and_the_negative():
    img = _asymmetric()
    template = gate.thumbnails(img[None, :, :, None])[0]
    for k in range(4):
        turned = np.rot90(img, k)[None, :, :, None]
        o = gate.orientation_scores(gate.thumbnails(turned), template)[0]
        back = (4 - k) % 4  # turning back by `back` quarter turns gives the template again
        assert o[back] == pytest.approx(1.0)
        assert all(o[j] < 0.9 for j in range(4) if j != back)
        assert o[4] == pytest.approx(-o[0])
    negative = gate.orientation_scores(gate.thumbnails((255 - img)[None, :, :, None]), template)[0]
    assert negative[0] == pytest.approx(-1.0) and negative[4] == pytest.approx(1.0)


def hand_gate(**changes) -> gate.FittedGate:
    """A gate with hand-set parameters: template = `_asymmetric`, pixel axes e0 and e1 with variances
    4 and 1, residual variance 2, features centred on (1, 1) with precision diag(1, 4), every
    intensity statistic allowed, all thresholds 1."""
    comps = np.zeros((2, T))
    comps[0, 0] = comps[1, 1] = 1.0
    fields = dict(template=gate.thumbnails(_asymmetric()[None, :, :, None])[0], pix_mean=np.zeros(T),
                  pix_components=comps, pix_var=np.array([4.0, 1.0]), pix_residual_var=2.0,
                  feat_mean=np.array([1.0, 1.0]), feat_precision=np.diag([1.0, 4.0]),
                  hist_low=np.full(6, -np.inf), hist_high=np.full(6, np.inf),
                  thresholds={"feature": 1.0, "pixel": 1.0, "orientation": 1.0}, info={})
    fields.update(changes)
    return gate.FittedGate(**fields)


def test_pixel_and_feature_distances_by_hand():
    g = hand_gate(pix_mean=np.full(T, 1.0))
    v = np.full((1, T), 1.0)
    v[0, :3] += [2.0, 3.0, 4.0]  # 2 and 3 along the axes, 4 in the residual
    # (2^2 / 4 + 3^2 / 1 + 4^2 / 2) / T
    assert gate.pixel_distance(v, g)[0] == pytest.approx(np.sqrt(18.0 / T))
    assert gate.feature_distance(np.array([[3.0, 1.5]]), g)[0] == pytest.approx(np.sqrt(5.0 / 2))
    assert gate.feature_distance(np.array([[1.0, 1.0]]), g)[0] == 0.0
    # A precision that is not positive (rounding) gives distance 0, never nan.
    negative = hand_gate(feat_precision=-np.eye(2))
    assert gate.feature_distance(np.array([[3.0, 1.5]]), negative)[0] == 0.0


# ----------------------------------------------------------------------------- the decision, branch by branch


def gray(std, size=128, mean=100.0):
    """A (1, size, size, 1) batch with two gray levels mean -/+ std (so exactly that contrast)."""
    return halves(mean - std, mean + std, size)


def simple(x=None, **kw):
    """check_batch with the simple checks only (no fitted gate: no network involved)."""
    return gate.check_batch(None, x=gray(30) if x is None else x, gate=None, **kw)[0]


def hard_only(res, word):
    """The image is refused with exactly one sentence (besides the no-gate note), containing `word`."""
    said = [w for w in res.warnings if "no fitted input gate" not in w]
    return not res.in_distribution and len(said) == 1 and word in said[0]


def test_size_and_shape_limits_are_inclusive():
    ok = simple(shapes=[(gate.MIN_SIDE, gate.MIN_SIDE)])
    assert ok.in_distribution and (ok.checks["height"], ok.checks["width"]) == (96, 96)
    small = simple(shapes=[(95, 200)])
    assert hard_only(small, "only 200 x 95 pixels") and "at least 96 pixels" in small.warnings[0]
    wide = simple(shapes=[(100, 260)])  # 2.6 times wider: still allowed
    assert wide.in_distribution and wide.checks["aspect_ratio"] == 2.6
    assert hard_only(simple(shapes=[(100, 261)]), "2.6 times longer")
    assert hard_only(simple(shapes=[(300, 110)]), "2.7 times longer")  # tall strips too
    assert simple(shapes=[(300, 110)]).checks["aspect_ratio"] == pytest.approx(0.367)
    assert "height" not in simple().checks  # no shape given (a prepared batch): no size check


def test_colour_and_contrast_limits():
    at_limit = simple(saturations=[gate.MAX_COLOURED])
    assert at_limit.in_distribution and at_limit.checks["coloured_share"] == 0.02
    assert hard_only(simple(saturations=[0.4]), "40% of the pixels are in colour")
    assert hard_only(simple(saturations=[0.0201]), "in colour")
    exactly = simple(gray(gate.MIN_STD))
    assert exactly.in_distribution and exactly.checks["std"] == 6.0
    assert hard_only(simple(gray(5.5)), "nearly uniform")
    assert simple(gray(5.5)).checks["std"] == 5.5


def test_dicom_modality_refuses_and_other_headers_only_warn():
    ct = simple(dicoms=[{"Modality": "CT", "BodyPartExamined": "CHEST"}])
    assert hard_only(ct, "modality is CT")
    for modality in ("CR", "DX", None):
        res = simple(dicoms=[{"Modality": modality, "ViewPosition": "PA"}])
        assert res.in_distribution and not [w for w in res.warnings if "DICOM" in w]
    lateral = simple(dicoms=[{"Modality": "DX", "BodyPartExamined": "KNEE", "ViewPosition": "LL"}])
    assert lateral.in_distribution  # said, not refused: the header alone does not prove it unreadable
    assert sum("DICOM" in w for w in lateral.warnings) == 2
    assert simple(dicoms=[{}]).warnings == simple().warnings


def test_dicom_warnings_each_header():
    assert gate.dicom_warnings({"Modality": "DX", "BodyPartExamined": "CHEST", "ViewPosition": "AP"}) == []
    assert gate.dicom_warnings({}) == []
    for view in ("LATERAL", "LL", "RL", "LAT"):
        assert gate.dicom_warnings({"ViewPosition": view}) == [
            "The DICOM says this is a lateral view; the model was trained on frontal (AP/PA) films only."]
    assert gate.dicom_warnings({"Modality": "MR"}) == [
        "The DICOM modality is MR, not a radiograph (CR or DX); this model reads chest radiographs only."]
    (body,) = gate.dicom_warnings({"BodyPartExamined": "ABDOMEN"})
    assert body == "The DICOM says the body part examined is ABDOMEN, not CHEST."


def test_without_a_gate_only_the_simple_checks_run():
    res = simple()
    assert res.in_distribution and res.ood_score is None
    assert res.warnings == ["This model has no fitted input gate, so only the simple image checks ran; "
                            "fit one with `python -m xray_core fit-gate RUN --data DATASET`."]
    assert set(res.checks) == {"std"}


def gated(x, features=((1.0, 1.0),), **changes):
    """check_batch against hand_gate(**changes) with the given penultimate features."""
    big = {"pixel": 1e6}  # the pixel distance out of the way unless a test sets it
    thresholds = {"feature": 1.0, "orientation": 1.0, **big, **changes.pop("thresholds", {})}
    return gate.check_batch(None, x=x, features=np.array(features, float), gate=hand_gate(
        thresholds=thresholds, **changes))


def test_learned_distance_at_its_threshold_passes_and_beyond_warns():
    x = _asymmetric()[None, :, :, None]
    # Feature distance sqrt(((2 - 1)^2 * 1 + 0) / 2) = sqrt(1/2): at a threshold of sqrt(1/2) the ratio is 1.
    (at,) = gated(x, [(2.0, 1.0)], thresholds={"feature": np.sqrt(0.5)})
    assert at.ood_score == pytest.approx(1.0) and at.in_distribution and at.warnings == []
    assert at.checks["feature_distance_ratio"] == 1.0
    (beyond,) = gated(x, [(2.0, 1.0)], thresholds={"feature": np.sqrt(0.5) / 1.25})
    assert not beyond.in_distribution and beyond.ood_score == pytest.approx(1.25)
    assert beyond.warnings == [
        "The model's view of this image is further from its training films than any validation film it was "
        "checked on (distance 1.25 x the threshold). It may not be a frontal chest X-ray of the kind it was "
        "trained on."]
    # The pixel distance counts too: the larger ratio is the score.
    # With every variance 2, a standardised thumbnail (sum of squares T) lies at sqrt(T / 2 / T).
    (pix,) = gated(x, [(1.0, 1.0)], thresholds={"pixel": 0.5 * np.sqrt(0.5)}, pix_var=np.array([2.0, 2.0]))
    assert pix.ood_score == pytest.approx(2.0) and pix.checks["pixel_distance_ratio"] == 2.0
    assert pix.checks["feature_distance_ratio"] == 0.0


def test_intensity_out_of_range_one_is_noted_two_refuse():
    x = _asymmetric()[None, :, :, None]
    stats = gate.intensity_stats(x)[0]
    one = stats.copy()
    one[0] += 1  # the mean is below the allowed range
    (noted,) = gated(x, hist_low=one, hist_high=np.full(6, np.inf))
    assert noted.in_distribution and noted.checks["intensity_out_of_range"] == ["mean gray level"]
    two = np.full(6, np.inf)
    two[[1, 4]] = stats[[1, 4]] - 1  # contrast and 95th percentile above the range
    (refused,) = gated(x, hist_low=np.full(6, -np.inf), hist_high=two)
    assert hard_only(refused, "Its gray levels are unlike every training film (contrast (standard "
                     "deviation), 95th percentile)")
    (edges,) = gated(x, hist_low=stats, hist_high=stats)  # the bounds themselves are inside
    assert edges.in_distribution and "intensity_out_of_range" not in edges.checks


def test_turned_and_negative_films_are_named():
    img = _asymmetric()
    named = {}
    for k, expected in ((1, "turned on its side"), (2, "upside down"), (3, "turned on its side")):
        (res,) = gated(np.rot90(img, k)[None, :, :, None], thresholds={"orientation": 0.5})
        assert hard_only(res, f"The film looks {expected}. Rotate it upright"), res.warnings
        named[k] = res.checks["orientation_correlation"]
    assert named[2][2] == 1.0
    (neg,) = gated((255 - img)[None, :, :, None], thresholds={"orientation": 0.5})
    assert hard_only(neg, "The film looks inverted")
    assert neg.checks["orientation_correlation"][4] == 1.0
    # Upright, or turned by less than the margin allows: nothing said.
    (upright,) = gated(img[None, :, :, None], thresholds={"orientation": 0.5})
    assert upright.in_distribution and upright.warnings == []
    (within,) = gated(np.rot90(img, 2)[None, :, :, None], thresholds={"orientation": 5.0})
    assert within.in_distribution


def test_a_negative_must_also_beat_the_margin():
    # A flat-ish film whose negative correlates only weakly with the template is not called inverted.
    img = _asymmetric()
    weak = 0.9 * np.full_like(img, img.mean()) + 0.1 * (255 - img)
    x = weak[None, :, :, None]
    (res,) = gated(x, thresholds={"orientation": 2.0})
    o = res.checks["orientation_correlation"]
    assert o[4] > max(o[:4]) and o[4] < 2.0
    assert res.in_distribution


def test_check_batch_refuses_what_it_cannot_gate(fitted):
    model, g, films = fitted
    with pytest.raises(gate.GateError, match="needs the decoded images or a prepared batch"):
        gate.check_batch(model, gate=g)
    with pytest.raises(gate.GateError, match=r"2-D uint8 gray images .*float64 \(8, 8\)"):
        gate.check_batch(model, [np.zeros((8, 8))], gate=g)
    with pytest.raises(gate.GateError, match=r"uint8 \(8, 8, 3\)"):
        gate.check_batch(model, [np.zeros((8, 8, 3), np.uint8)], gate=g)
    # Images and the prepared batch (with the shapes) give the same answers.
    by_images = gate.check_batch(model, films[:3], gate=g)
    x = model.prepare_batch(films[:3])
    by_batch = gate.check_batch(model, x=x, shapes=[f.shape for f in films[:3]], gate=g)
    by_features = gate.check_batch(model, x=x, features=model.forward(x).features, shapes=[(128, 128)] * 3, gate=g)
    assert [r.to_dict() for r in by_images] == [r.to_dict() for r in by_batch] == [r.to_dict() for r in by_features]
    assert by_images[0].checks["height"] == 128


def test_result_to_dict_is_plain_json():
    res = gate.GateResult(in_distribution=np.bool_(False), ood_score=np.float64(1.5), warnings=["a"],
                          checks={"std": 3.0})
    d = res.to_dict()
    assert d == {"in_distribution": False, "ood_score": 1.5, "warnings": ["a"], "checks": {"std": 3.0}}
    assert type(d["in_distribution"]) is bool and type(d["ood_score"]) is float
    passed = gate.GateResult(np.bool_(True), None, [], {}).to_dict()
    assert passed["in_distribution"] is True and passed["ood_score"] is None


# ----------------------------------------------------------------------------- fitting, saving, seen files


def test_fit_figures_follow_the_documented_rules(fitted):
    # Fits here rather than reading the fixture's gate, so that mutation testing links this test to fit_gate.
    model, _, films = fitted
    x = model.prepare_batch(films)
    train, val = x[:300], x[300:]
    g = gate_fit.fit_gate(model, train, val, save=False)
    assert set(g.thresholds) == {"feature", "pixel", "orientation"}
    res = gate.check_batch(model, x=val, gate=g)
    feat = np.array([r.checks["feature_distance_ratio"] for r in res])
    pix = np.array([r.checks["pixel_distance_ratio"] for r in res])
    # "thresholds at the 99.5 % quantile of the validation films, times 1.15 above it"
    assert np.quantile(feat, gate.VAL_QUANTILE) == pytest.approx(1 / gate.MARGIN, abs=2e-4)
    assert np.quantile(pix, gate.VAL_QUANTILE) == pytest.approx(1 / gate.MARGIN, abs=2e-4)
    orient = np.array([r.checks["orientation_correlation"] for r in res])
    gap = np.quantile(orient[:, 1:4].max(axis=1) - orient[:, 0], 0.999)
    assert g.thresholds["orientation"] == pytest.approx(max(gap + 0.05, 0.1), abs=1e-3)
    # The pixel model: principal axes (orthonormal) with the variance of the training films along
    # each, and the variance left outside them, per remaining pixel.
    thumbs = gate.thumbnails(train)
    np.testing.assert_allclose(g.pix_mean, thumbs.mean(axis=0), atol=1e-9)
    np.testing.assert_allclose(g.template, thumbs.mean(axis=0), atol=1e-9)
    k = g.pix_components.shape[0]
    assert k == gate.PIXEL_COMPONENTS
    np.testing.assert_allclose(g.pix_components @ g.pix_components.T, np.eye(k), atol=1e-9)
    np.testing.assert_allclose(g.pix_var, np.var((thumbs - g.pix_mean) @ g.pix_components.T, axis=0, ddof=1),
                               rtol=1e-9)
    total = np.var(thumbs, axis=0, ddof=1).sum()
    assert g.pix_residual_var == pytest.approx((total - g.pix_var.sum()) / (T - k), rel=5e-3)
    # Features: centred on the training films' mean, with the inverse of a shrunk covariance.
    feats = model.forward(train).features.astype(np.float64)
    np.testing.assert_allclose(g.feat_mean, feats.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.feat_precision, LedoitWolf().fit(feats).precision_, rtol=1e-4, atol=1e-6)
    # Intensity bounds: the training films' range (0.05 % .. 99.95 %) widened by 10 % of it each side.
    stats = gate.intensity_stats(train)
    lo, hi = stats.min(axis=0), stats.max(axis=0)
    assert g.hist_low.shape == g.hist_high.shape == (6,)
    assert np.all(g.hist_low < lo) and np.all(g.hist_high > hi)
    np.testing.assert_allclose(g.hist_high - g.hist_low, 1.2 * (hi - lo), rtol=0.05)
    np.testing.assert_allclose((g.hist_high + g.hist_low) / 2, (hi + lo) / 2, atol=0.05 * (hi - lo).max())
    # What the fit reports.
    info = g.info
    assert (info["n_train"], info["n_validation"], info["n_corrupted_each"]) == (300, 100, 100)
    assert (info["feature_dim"], info["pixel_components"]) == (16, gate.PIXEL_COMPONENTS)
    assert (info["val_quantile"], info["margin"]) == (0.995, 1.15)
    assert info["validation_flagged"] <= 0.02
    assert set(info["corruptions_caught"]) == {"inverted", "rotated 90", "upside down", "corner crop", "noise",
                                               "flat"}
    assert all(v >= 0.9 for v in info["corruptions_caught"].values()), info["corruptions_caught"]
    assert type(info["seconds"]) is float and 0 < info["seconds"] < 120


def test_fit_needs_50_training_and_20_validation_films(fitted):
    model, _, films = fitted
    x = model.prepare_batch(films[:70])
    with pytest.raises(gate.GateError, match="got 49 and 20"):
        gate_fit.fit_gate(model, x[:49], x[50:], save=False)
    with pytest.raises(gate.GateError, match="got 50 and 19"):
        gate_fit.fit_gate(model, x[:50], x[51:], save=False)
    small = gate_fit.fit_gate(model, x[:50], x[50:], save=False)
    assert small.info["n_corrupted_each"] == 20 and small.info["pixel_components"] == gate.PIXEL_COMPONENTS


def test_corruptions_are_the_named_transformations():
    x = np.stack([_asymmetric()[:, :, None]] * 2).repeat(3, axis=3)  # (2, 64, 64, 3)
    bad = gate_fit.corruptions(x, seed=5)
    np.testing.assert_array_equal(bad["inverted"], 255 - x)
    np.testing.assert_array_equal(bad["rotated 90"], np.rot90(x, 1, axes=(1, 2)))
    np.testing.assert_array_equal(bad["upside down"], x[:, ::-1, ::-1])
    crop = bad["corner crop"]
    assert crop.shape == x.shape
    np.testing.assert_array_equal(crop[..., 0], crop[..., 2])
    assert crop[0, :40, :30, 0].min() == pytest.approx(250, abs=1)  # the top-left third: the bright block
    assert crop[0, -1, -1, 0] < 100
    assert bad["noise"].shape == x.shape and 0 <= bad["noise"].min() < 0.5 and 254.5 < bad["noise"].max() <= 255
    assert bad["noise"].std() > 60
    assert abs(bad["flat"].mean() - 128) < 0.1 and 0.9 < bad["flat"].std() < 1.1
    again = gate_fit.corruptions(x, seed=5)
    np.testing.assert_array_equal(again["noise"], bad["noise"])
    assert not np.array_equal(gate_fit.corruptions(x, seed=6)["noise"], bad["noise"])
    default = gate_fit.corruptions(x)
    np.testing.assert_array_equal(default["noise"], gate_fit.corruptions(x, seed=0)["noise"])
    # Prepared inputs are float32, whatever came in.
    assert all(v.dtype == np.float32 for v in gate_fit.corruptions(x.astype(np.float64)).values())


def test_corner_crop_is_the_top_left_third_enlarged_without_ringing():
    ramp = np.tile(np.arange(66, dtype=np.float32), (66, 1))  # gray level = column
    ramp[:, 30:] = 200  # and a step outside the crop
    crop = gate_fit.corruptions(ramp[None, :, :, None])["corner crop"][0, :, :, 0]
    # The top-left 22 x 22 px (columns 0..21) stretched over 66 px: the right edge reaches column 21's level.
    assert crop[0, -1] == pytest.approx(21, abs=1) and crop[0, 0] == pytest.approx(0, abs=1)
    np.testing.assert_allclose(crop[0], crop[-1])  # rows are alike: it is the same crop top to bottom
    step = np.zeros((66, 66), np.float32)
    step[:, 11:] = 200  # a step inside the crop: bilinear enlarging stays within 0..200 (no overshoot)
    big = gate_fit.corruptions(step[None, :, :, None])["corner crop"]
    assert big.min() >= 0 and big.max() <= 200


def test_saved_gate_round_trips_and_refuses_other_versions(fitted, tmp_path):
    _, g, _ = fitted
    g.save(tmp_path)
    again = gate.load_gate(tmp_path)
    for name in ("template", "pix_mean", "pix_components", "pix_var", "feat_mean", "feat_precision", "hist_low",
                 "hist_high"):
        np.testing.assert_allclose(getattr(again, name), getattr(g, name), rtol=1e-5, atol=1e-5)
        assert getattr(again, name).dtype == np.float64
    assert again.pix_residual_var == pytest.approx(g.pix_residual_var)
    assert again.thresholds == pytest.approx(g.thresholds) and again.info["n_train"] == 300
    (tmp_path / "gate.npz").rename(tmp_path / "moved.npz")
    assert gate.load_gate(tmp_path) is None  # half a gate is no gate
    (tmp_path / "moved.npz").rename(tmp_path / "gate.npz")
    meta = (tmp_path / "gate.json").read_text()
    (tmp_path / "gate.json").write_text(meta.replace('"version": 1', '"version": 2'))
    with pytest.raises(gate.GateError, match=rf"not a gate of version 1; refit it with `python -m xray_core "
                                             rf"fit-gate {tmp_path.name} --data DATASET`"):
        gate.load_gate(tmp_path)
    (tmp_path / "gate.json").write_text("[1]")
    with pytest.raises(gate.GateError):
        gate.load_gate(tmp_path)


def test_a_gate_is_parsed_once_and_again_when_its_file_changes(fitted, tmp_path):
    """load_gate parses gate.npz once per content: the same read-only arrays come back, and a
    file rewritten in place (however soon) gives the new arrays."""
    _, g, _ = fitted
    g.save(tmp_path)
    first, second = gate.load_gate(tmp_path), gate.load_gate(tmp_path)
    assert first.template is second.template
    with pytest.raises(ValueError, match="read-only"):
        first.template[0] = 0.0
    dataclasses.replace(g, template=g.template + 1.0).save(tmp_path)
    np.testing.assert_allclose(gate.load_gate(tmp_path).template, first.template + 1.0, rtol=1e-5, atol=1e-5)


def test_parsed_files_are_kept_for_the_16_most_recently_used_contents():
    """The cache of parsed run files holds the 16 most recently used contents: a 17th pushes out
    the least recently used one, which is parsed again when it comes back."""
    parsed = []

    def parse_kept(raw):
        parsed.append(raw)
        return object()

    first = gate._by_content(b"content 0", parse_kept)
    for i in range(1, 16):
        gate._by_content(f"content {i}".encode(), parse_kept)
    assert gate._by_content(b"content 0", parse_kept) is first and len(parsed) == 16  # 16 fit
    newest = gate._by_content(b"content 16", parse_kept)  # pushes out content 1, the least recent
    assert gate._by_content(b"content 16", parse_kept) is newest
    assert gate._by_content(b"content 0", parse_kept) is first and len(parsed) == 17
    gate._by_content(b"content 1", parse_kept)
    assert len(parsed) == 18 and parsed[-1] == b"content 1"


def test_file_hash_is_the_first_128_bits_of_sha256():
    assert gate.file_hash(b"abc") == "ba7816bf8f01cfea414140de5dae2223"


def test_seen_hashes_say_which_split_a_file_was_in(tmp_path):
    files = {}
    for name in ("a", "b", "c"):
        files[name] = tmp_path / f"{name}.jpeg"
        files[name].write_bytes(name.encode() * 10)
    run = tmp_path / "run"
    run.mkdir()
    assert gate.seen_in(run, b"aaaaaaaaaa") is None  # no list yet
    written = gate_fit.write_seen_hashes(run, {"training": [files["a"], files["b"]], "validation": [str(files["c"])]})
    assert written == run / gate.SEEN_HASHES
    lines = written.read_text().splitlines()
    assert lines == sorted(lines) and len(lines) == 3
    assert gate.seen_in(run, b"aaaaaaaaaa") == "training"
    assert gate.seen_in(str(run), bytearray(b"bbbbbbbbbb")) == "training"
    assert gate.seen_in(run, b"cccccccccc") == "validation"
    assert gate.seen_in(run, b"dddddddddd") is None
    with open(written, "a", encoding="ascii") as fh:  # the list grows in place: seen at once
        fh.write(f"{gate.file_hash(b'dddddddddd')} validation\n")
    assert gate.seen_in(run, b"dddddddddd") == "validation"


def test_fit_saves_into_the_run_and_auto_loads_it(tmp_path):
    model = load_model(tiny_net_run(tmp_path / "saved-run"), cache=False)
    rng = np.random.default_rng(4)
    x = model.prepare_batch([film(rng, i % 2) for i in range(80)])
    seen = tmp_path / "seen.jpeg"
    seen.write_bytes(b"a training file")
    g = gate_fit.fit_gate(model, x[:55], x[55:], seen={"training": [seen]})
    assert (model.path / gate.GATE_ARRAYS).is_file() and (model.path / gate.GATE_JSON).is_file()
    assert gate.seen_in(model.path, b"a training file") == "training"
    upright = film(np.random.default_rng(5), 0)
    auto = gate.check(model, upright)  # gate="auto": the run's saved gate
    assert auto.ood_score is not None
    assert auto.ood_score == pytest.approx(gate.check(model, upright, gate=g).ood_score, rel=1e-4)
    _, from_file, _ = check_file(model, png(upright))  # the same default for a file
    assert from_file.ood_score == pytest.approx(auto.ood_score, rel=1e-4)
    nothing = load_model(tiny_net_run(tmp_path / "unsaved-run"), cache=False)
    gate_fit.fit_gate(nothing, x[:55], x[55:], seen={"training": [seen]}, save=False)
    assert sorted(p.name for p in nothing.path.iterdir()) == ["model.json", "model.keras"]


def test_fit_gate_command_fits_a_run_on_its_own_split(tmp_path, capsys):
    from tests.synthetic import make_synthetic_dataset
    from xray_core import cli

    data = make_synthetic_dataset(tmp_path / "chest_xray", n_train=(40, 40), n_val=(2, 2), n_test=(2, 2), size=64)
    runs_root = tmp_path / "runs"
    run = tiny_net_run(runs_root / "gated")
    train = sorted((data / "train").rglob("*.jpeg"))
    held_out = train[::3]  # 27 films: the run's stored validation list; the other 53 are its training films
    (run / "validation.csv").write_text("path,label\n" + "".join(
        f"{p.relative_to(data).as_posix()},{int(p.parent.name == 'PNEUMONIA')}\n" for p in held_out))
    assert cli.main(["fit-gate", "gated", "--data", str(data), "--runs-dir", str(runs_root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gated: gate fitted on 53 training films in ")
    assert " of 27 validation films flagged; corrupted validation copies caught: inverted " in out
    assert "wrote gate.npz, gate.json and seen_hashes.txt to " in out and out.rstrip().endswith("gated")
    g = gate.load_gate(run)
    assert (g.info["n_train"], g.info["n_validation"]) == (53, 27)
    assert gate.seen_in(run, held_out[0].read_bytes()) == "validation"
    assert gate.seen_in(run, train[1].read_bytes()) == "training"
    assert gate.seen_in(run, next((data / "test").rglob("*.jpeg")).read_bytes()) is None


def test_the_assessment_decodes_files_and_bytes(fitted, tmp_path):
    model, g, films = fitted
    path = tmp_path / "film.png"
    path.write_bytes(png(films[0]))
    img, res, facts = check_file(model, path, gate=g)
    np.testing.assert_array_equal(img, films[0])
    assert facts is None and res.checks["coloured_share"] == 0.0 and res.in_distribution
    assert res.ood_score is not None  # the gate given, not the run's (it has none)
    img2, res2, _ = check_file(model, path.read_bytes(), "film.png", gate=g)
    assert res2.to_dict() == res.to_dict()
    rgb = np.zeros((128, 128, 3), np.uint8)
    rgb[..., 0] = films[0]
    _, red, _ = check_file(model, png(rgb), gate=g)
    assert red.checks["coloured_share"] > 0.5 and not red.in_distribution


def test_the_assessment_errors_name_the_file(fitted, tmp_path):
    model, g, _ = fitted
    pdf = tmp_path / "letter.pdf"
    pdf.write_bytes(b"%PDF-1.4 not a film")
    with pytest.raises(imaging.ImageDecodeError, match=r"^'[^']*letter\.pdf' is a PDF document"):
        check_file(model, pdf, gate=g)
    with pytest.raises(imaging.ImageDecodeError, match=r"^'upload\.png' is a PDF document"):
        check_file(model, pdf.read_bytes(), "upload.png", gate=g)
    with pytest.raises(imaging.ImageDecodeError, match=r"^The file is a PDF document"):
        check_file(model, pdf.read_bytes(), gate=g)


def ct_dicom(tmp_path, pixels: np.ndarray | None = None) -> Path:
    """A small CT DICOM (lateral head) with patient data that must never be read out; `pixels`
    (2-D uint8) default to a 128 px synthetic film."""
    pixels = film(np.random.default_rng(3), 0) if pixels is None else pixels
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
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 1, 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, np.uint8).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # DX image
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = pydicom.uid.generate_uid()
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_assessment_reads_the_dicom_header(fitted, tmp_path):
    model, g, _ = fitted
    _, res, facts = check_file(model, ct_dicom(tmp_path), gate=g)
    assert facts["Modality"] == "CT" and facts["ViewPosition"] == "LATERAL"
    assert not res.in_distribution
    assert [w for w in res.warnings if "DICOM" in w] == gate.dicom_warnings(facts)
    assert len(gate.dicom_warnings(facts)) == 3


# ----------------------------------------------------------------------------- sentences, rounding and edges


def test_the_sentences_in_full():
    assert simple(shapes=[(1, 4)]).warnings[1] == (
        "The image is 4.0 times longer than it is wide; a chest film is close to square. Upload the whole film, "
        "not a strip or a crop.")
    assert simple(shapes=[(1, 4)]).checks["aspect_ratio"] == 4.0
    assert simple(saturations=[0.5]).warnings[0] == (
        "50% of the pixels are in colour; a radiograph is gray. This looks like a photograph, a screenshot or a "
        "coloured map, not an X-ray.")
    assert simple(gray(1.0)).warnings[0] == (
        "The image is nearly uniform (almost no contrast): there is no film to read. Check the export or the "
        "window settings.")
    img = _asymmetric()
    (neg,) = gated((255 - img)[None, :, :, None], thresholds={"orientation": 0.5})
    assert neg.warnings == ["The film looks inverted (a negative: bones dark, lungs bright). Export it with the "
                            "usual display (MONOCHROME2) and upload again."]
    stats = gate.intensity_stats(img[None, :, :, None])[0]
    (two,) = gated(img[None, :, :, None], hist_low=stats + 1, hist_high=np.full(6, np.inf))
    assert two.warnings[0].endswith("). Check the export's windowing, or whether this is an X-ray at all.")
    with pytest.raises(gate.GateError, match=r"^check_batch needs the decoded images or a prepared batch x\.$"):
        gate.check_batch(None, gate=None)


def test_checks_are_rounded_as_reported():
    assert simple(saturations=[0.0123456]).checks["coloured_share"] == 0.0123
    assert simple(gray(6.123456)).checks["std"] == 6.12
    x = _asymmetric()[None, :, :, None]
    (res,) = gated(x, [(2.0, 1.0)], thresholds={"feature": np.sqrt(0.5) / 1.23456789})
    assert res.checks["feature_distance_ratio"] == 1.2346
    assert res.checks["pixel_distance_ratio"] == round(res.checks["pixel_distance_ratio"], 4)
    (turned,) = gated(np.rot90(_asymmetric(), 2)[None, :, :, None])
    o = turned.checks["orientation_correlation"]
    assert all(type(v) is float and v == round(v, 4) for v in o)
    assert 0 < abs(o[0]) < 1  # a fraction, not rounded to a whole number


def test_a_gate_with_a_film_at_the_contrast_limit_is_measured():
    (res,) = gated(gray(gate.MIN_STD, size=64))
    assert res.ood_score is not None and "feature_distance_ratio" in res.checks


def test_dicom_and_size_warnings_add_up():
    res = simple(shapes=[(50, 50)], dicoms=[{"Modality": "DX", "ViewPosition": "LAT"}])
    assert any("50 x 50" in w for w in res.warnings) and any("lateral" in w for w in res.warnings)


def test_orientation_margins_are_strict():
    img = _asymmetric()
    template = gate.thumbnails(img[None, :, :, None])[0]
    for k, name in ((1, "turned on its side"), (2, "upside down"), (3, "turned on its side")):
        (res,) = gated(np.rot90(img, k)[None, :, :, None], thresholds={"orientation": 0.1})
        assert hard_only(res, f"The film looks {name}."), res.warnings
    # Exactly at the margin: not refused.
    upside = np.rot90(img, 2)[None, :, :, None]
    o = gate.orientation_scores(gate.thumbnails(upside), template)[0]
    (at,) = gated(upside, thresholds={"orientation": float(o[2] - o[0])})
    assert at.in_distribution, at.warnings
    negative = (255 - img)[None, :, :, None]
    o = gate.orientation_scores(gate.thumbnails(negative), template)[0]
    (at_neg,) = gated(negative, thresholds={"orientation": float(o[4])})
    assert not any("inverted" in w for w in at_neg.warnings)


def test_default_gate_is_the_runs_own_for_batches_too(fitted, tmp_path):
    model = load_model(tiny_net_run(tmp_path / "auto-batch"), cache=False)
    _, g, films = fitted
    g.save(model.path)
    (auto,) = gate.check_batch(model, [255 - films[0]])
    assert auto.ood_score == pytest.approx(gate.check(model, 255 - films[0], gate=g).ood_score, rel=1e-4)
    refused = gate.check(model, films[0], dicom={"Modality": "CT"}, gate=None)
    assert not refused.in_distribution and any("modality is CT" in w for w in refused.warnings)


def test_distances_are_per_film():
    g = hand_gate()
    v = np.zeros((2, T))
    v[0, 2] = 4.0  # residual only: 16 / 2
    v[1, 0] = 2.0  # along the first axis only: 4 / 4
    np.testing.assert_allclose(gate.pixel_distance(v, g), np.sqrt(np.array([8.0, 1.0]) / T))
    np.testing.assert_allclose(gate.feature_distance(np.array([[3.0, 1.0], [1.0, 1.5]]), g),
                               np.sqrt(np.array([4.0, 1.0]) / 2))


def test_intensity_percentiles_on_a_ramp():
    ramp = np.arange(100, dtype=np.float32).reshape(1, 10, 10, 1)
    stats = gate.intensity_stats(ramp)
    assert stats.dtype == np.float64
    assert tuple(stats[0, 2:5]) == pytest.approx((4.95, 49.5, 94.05))


def test_orientation_does_not_depend_on_the_template_scale():
    img = _asymmetric()
    thumb = gate.thumbnails(img[None, :, :, None])
    for template in (0.25 * thumb[0], 3 + 0.5 * thumb[0]):
        o = gate.orientation_scores(thumb, template)
        assert o.shape == (1, 5)
        assert o[0, 0] == pytest.approx(1.0) and o[0, 4] == pytest.approx(-1.0)


def test_gate_json_holds_what_it_says(fitted, tmp_path):
    import json

    _, g, _ = fitted
    g.save(tmp_path)
    meta = json.loads((tmp_path / "gate.json").read_text())
    assert set(meta) == {"version", "thumb", "pix_residual_var", "thresholds", "info"}
    assert (meta["version"], meta["thumb"]) == (1, 32)
    del meta["info"]
    (tmp_path / "gate.json").write_text(json.dumps(meta))
    assert gate.load_gate(tmp_path).info == {}
