"""xray_core.explain on models whose answer is known, against lime itself, and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xray_core import explain as ex
from xray_core.explain import fastscore, gradcam as gradcam_mod, lime as lime_mod, panels as panels_mod

ROOT = Path(__file__).resolve().parents[1]
SIZE = 48
HALF = SIZE // 2


def quadrant_model(size: int = SIZE, units: int = 1):
    """p = sigmoid(40 * mean(conv map) - 3.5), where the conv map is zero outside the top-left
    quadrant (cropped, then padded back so positions stay aligned): only that quadrant matters."""
    import keras

    h = size // 2
    inp = keras.Input((size, size, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inp)
    x = keras.layers.Cropping2D(((0, h), (0, h)), name="crop")(x)
    x = keras.layers.ZeroPadding2D(((0, h), (0, h)), name="pad")(x)
    x = keras.layers.Conv2D(1, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(units, activation="sigmoid", name="output")(x)
    model = keras.Model(inp, out, name="quadrant")
    model.get_layer("conv").set_weights([np.full((3, 3, 1, 1), 1 / 9, np.float32), np.zeros(1, np.float32)])
    if units == 1:
        w, b = np.array([[40.0]]), np.array([-3.5])
    else:  # column 0 falls and column 1 rises with the quadrant's brightness
        w, b = np.array([[-40.0, 40.0]]), np.array([3.5, -3.5])
    model.get_layer("output").set_weights([w.astype(np.float32), b.astype(np.float32)])
    return model


def blob_image(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Three bright blobs on a noisy gradient: one in the top-left quadrant, two elsewhere."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 70 + 30 * x + rng.normal(0, 6, (size, size))
    for cy, cx in ((0.25, 0.25), (0.75, 0.75), (0.25, 0.75)):
        img = img + 170 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.07**2))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    return quadrant_model()


@pytest.fixture(scope="module")
def image():
    return blob_image()


@pytest.fixture(scope="module")
def explanation(model, image):
    return ex.explain_lime(model, image, num_samples=600, segmentation="slic", seed=0)


def _share_in_quadrant(mask: np.ndarray) -> float:
    return float(mask[:HALF, :HALF].sum() / mask.sum())


def test_import_does_not_load_tensorflow():
    code = "import sys, xray_core.explain; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_lime_and_gradcam_find_the_region_that_decides(model, image, explanation):
    exp = explanation
    assert exp.label == 1 and exp.predicted_label == 1 and exp.probability > 0.5
    top = exp.top_abs[0]
    assert exp.weights[top] > 0
    top_mask = exp.segments == top
    assert _share_in_quadrant(top_mask) > 0.9
    assert top_mask[HALF // 2, HALF // 2]  # the blob's centre
    # superpixels wholly outside the quadrant get (almost) nothing
    outside = [k for k in range(exp.n_superpixels) if _share_in_quadrant(exp.segments == k) == 0]
    assert outside and np.max(np.abs(exp.weights[outside])) < 0.1 * exp.weights[top]
    assert 0.5 < exp.score <= 1.0

    cam = ex.grad_cam(model, image)
    assert cam.layer == "conv" and cam.heatmap.shape == (SIZE, SIZE)
    assert cam.heatmap.dtype == np.float32 and cam.heatmap.max() == pytest.approx(1.0)
    hy, hx = np.unravel_index(np.argmax(cam.heatmap), cam.heatmap.shape)
    assert hy < HALF and hx < HALF
    assert cam.heatmap[HALF + 1 :, :].max() == 0 and cam.heatmap[:, HALF + 1 :].max() == 0
    hottest = ex.gradcam_order(cam.heatmap, exp.segments)[0]
    assert _share_in_quadrant(exp.segments == hottest) > 0.9

    trust = ex.trust_figures(model, image, exp, gradcam=cam, seeds=3, random_seed=0)
    areas = trust["deletion_area"]
    assert areas["lime"] < areas["random"]
    assert areas["gradcam"] < areas["random"]
    curve = trust["deletion_curves"]["lime"]
    assert curve["fractions"][0] == 0.0 and curve["fractions"][-1] == 1.0
    assert curve["probabilities"][0] == pytest.approx(exp.label_score, abs=1e-6)
    assert len(curve["probabilities"]) == exp.n_superpixels + 1
    stab = trust["stability"]
    assert stab["seeds"] == [0, 1, 2] and 0.0 <= stab["jaccard_min"] <= stab["jaccard_mean"] <= 1.0
    json.dumps(trust)  # plain numbers only


def test_weights_equal_lime_library(model, image, explanation):
    """Same segments, same random_state: our fast path reproduces lime_image's weights."""
    from lime import lime_image

    exp = explanation
    adapter = ex.as_adapter(model)

    def classifier(rgb_batch):  # lime turns the gray image into RGB; the model takes 1 channel
        return adapter.class_probabilities(rgb_batch[..., :1].astype(np.float32))

    explainer = lime_image.LimeImageExplainer(random_state=exp.seed)
    ref = explainer.explain_instance(
        exp.model_input[..., 0].astype(np.float64), classifier, labels=(exp.label,),
        hide_color=0, top_labels=None, num_samples=exp.num_samples, batch_size=256,
        segmentation_fn=lambda _img: exp.segments, random_seed=exp.seed,
    )
    ref_weights = np.zeros(exp.n_superpixels)
    for k, w in ref.local_exp[exp.label]:
        ref_weights[k] = w
    np.testing.assert_allclose(exp.weights, ref_weights, rtol=1e-6, atol=1e-9)
    assert exp.intercept == pytest.approx(ref.intercept[exp.label], rel=1e-6)
    assert exp.score == pytest.approx(ref.score, rel=1e-6)


def test_quickshift_matches_the_seed_recipe(image):
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    adapter_input = image[..., None].astype(np.float32)
    ours = ex.segment(adapter_input, "quickshift", seed=42)
    seed_fn = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2)
    theirs = seed_fn(np.repeat(adapter_input / 255.0, 3, axis=2).astype(np.float64))
    _, theirs = np.unique(theirs, return_inverse=True)
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))


def test_same_seed_same_weights_other_seed_differs(model, image, explanation):
    again = ex.explain_lime(model, image, num_samples=600, segmentation="slic", seed=0, panels=False)
    np.testing.assert_array_equal(again.weights, explanation.weights)
    np.testing.assert_array_equal(again.segments, explanation.segments)
    other = ex.explain_lime(model, image, num_samples=600, segmentation="slic", seed=1, panels=False)
    assert not np.array_equal(other.weights, explanation.weights)


def test_one_unit_head_explains_normal_as_one_minus_p(model, image, explanation):
    normal = ex.explain_lime(model, image, label="NORMAL", num_samples=600, segmentation="slic",
                             seed=0, panels=False)
    assert normal.label == 0 and normal.predicted_label == 1
    np.testing.assert_allclose(normal.weights, -explanation.weights, atol=1e-9)
    assert normal.intercept == pytest.approx(1 - explanation.intercept)
    assert normal.label_score == pytest.approx(1 - explanation.probability)


def test_two_unit_head_uses_the_label_column(image):
    model2 = quadrant_model(units=2)
    adapter = ex.as_adapter(model2)
    assert adapter.output_units == 2
    x = adapter.prepare(image)[None]
    np.testing.assert_allclose(adapter.class_probabilities(x), np.asarray(model2(x)), rtol=1e-6)
    exp = ex.explain_lime(model2, image, num_samples=300, segmentation="slic", panels=False)
    assert exp.label == 1
    assert exp.probability == pytest.approx(float(np.asarray(model2(x))[0, 1]), rel=1e-6)
    assert _share_in_quadrant(exp.segments == exp.top_abs[0]) > 0.9


def test_panels_any_input_size_and_rgb_input(model):
    for shape in [(30, 50), (200, 120), (SIZE, SIZE, 3)]:
        rng = np.random.default_rng(1)
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        exp = ex.explain_lime(model, img, num_samples=100, segmentation="felzenszwalb", seed=3)
        h, w = shape[:2]
        H, W = ex.display_shape((h, w))
        assert max(H, W) == ex.DISPLAY_SIZE >= 448
        assert abs(H / W - h / w) < 0.02
        assert exp.segments.shape == (SIZE, SIZE)
        for name, panel in exp.panels.as_dict().items():
            assert panel.shape == (H, W, 3) and panel.dtype == np.uint8, name
        assert exp.legend.vmax == pytest.approx(np.abs(exp.weights).max())
        assert exp.legend.vmin == -exp.legend.vmax and exp.legend.cmap == "RdBu"
        assert len(exp.top_abs) == min(5, exp.n_superpixels)
        assert all(exp.weights[k] > 0 for k in exp.top_supporting)


def test_panels_show_what_they_promise(explanation):
    exp = explanation
    p = exp.panels
    seg = ex.upsample_nearest(exp.segments, p.full.shape[:2])
    outside = ~np.isin(seg, exp.top_supporting)
    # partial: black outside the top supporting superpixels (but for their outlines)
    edge = panels_mod._outline(seg, exp.top_supporting, panels_mod._boundary_thickness(seg.shape))
    assert p.partial[outside & ~edge].max() == 0
    assert (p.full[edge] == ex.BOUNDARY_COLOR).all()
    # pros and cons: the strongest supporter is tinted green and the anatomy still shows through
    top = seg == exp.top_abs[0]
    g = p.pros_cons[top & ~edge].astype(int)
    assert (g[:, 1] > g[:, 0]).all()
    assert g[:, 1].std() > 0
    # heatmap: the strongest supporter has the map's end colour (RdBu at +vmax is blue)
    lut = panels_mod._colormap_lut("RdBu")
    heat_top = p.heatmap[top & ~ex.boundaries(seg)]
    assert (heat_top == lut[255]).all()


def test_heatmap_range_covers_negative_weights_without_clipping():
    seg = np.repeat(np.arange(4, dtype=np.int32), 16).reshape(8, 8)
    weights = np.array([-0.3, -0.1, 0.0, 0.2])
    legend = ex.HeatmapLegend(vmin=-0.3, vmax=0.3, cmap="RdBu")
    panels = ex.lime_panels(np.full((8, 8), 128, np.uint8), seg, weights, [3], [0, 3, 1, 2], legend, 64)
    lut = panels_mod._colormap_lut("RdBu")
    big = ex.upsample_nearest(seg, (64, 64))
    inner = ~ex.boundaries(big)
    assert (panels.heatmap[(big == 0) & inner] == lut[0]).all()  # -0.3 -> the map's red end
    assert (panels.heatmap[(big == 2) & inner] == lut[128]).all()  # 0 -> the centre


def test_few_superpixels_are_handled(model):
    flat = np.full((SIZE, SIZE), 90, np.uint8)
    exp = ex.explain_lime(model, flat, num_samples=50, segmentation="quickshift")
    n = exp.n_superpixels
    assert 1 <= n < 5
    assert sorted(exp.top_abs) == list(range(n)) and len(exp.top_supporting) <= min(2, n)
    assert exp.panels.heatmap.dtype == np.uint8
    curve = ex.deletion_curve(model, flat, exp.segments, ex.lime_order(exp.weights), exp.label)
    assert len(curve.fractions) == n + 1 and curve.fractions[-1] == 1.0


def test_no_retracing(model, image):
    import keras

    fresh = keras.models.clone_model(model)
    fresh.set_weights(model.get_weights())
    for seed, batch in ((0, 64), (1, 100), (2, None)):
        ex.explain_lime(fresh, image, num_samples=130, segmentation="slic", seed=seed,
                        batch_size=batch, panels=False)
    ex.grad_cam(fresh, image)
    ex.grad_cam(fresh, image, label=0)
    forward = ex.compiled_forward(fresh, (SIZE, SIZE, 1))
    assert forward.experimental_get_tracing_count() == 1
    gradcam_fn = gradcam_mod._compiled_gradcam(ex.as_adapter(fresh), "conv")
    assert gradcam_fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("arch", ["baseline", "model3", "model4"])
def test_grad_cam_for_seed_architectures(arch):
    import keras

    from xray_core import architectures

    keras.utils.set_random_seed(0)
    model = architectures.build(arch, input_shape=(40, 40, 1))
    img = blob_image(70)
    cam = ex.grad_cam(model, img)
    layer = model.get_layer(cam.layer)
    assert cam.heatmap.shape == tuple(layer.output.shape[1:3])
    assert np.isfinite(cam.heatmap).all() and 0 <= cam.heatmap.min() <= cam.heatmap.max() <= 1
    overlay = ex.make_overlay(img, cam.heatmap)
    assert overlay.shape == (ex.DISPLAY_SIZE, ex.DISPLAY_SIZE, 3) and overlay.dtype == np.uint8


def test_errors_are_sentences(model, image):
    with pytest.raises(ex.ExplainError, match="quickshift"):
        ex.explain_lime(model, image, segmentation="watershed")
    with pytest.raises(ex.ExplainError, match="label"):
        ex.explain_lime(model, image, label=2)
    with pytest.raises(ex.ExplainError, match="uint8"):
        ex.explain_lime(model, image.astype(np.float32))
    with pytest.raises(ex.ExplainError, match="every superpixel"):
        ex.deletion_curve(model, image, np.zeros((SIZE, SIZE), np.int32) + np.eye(SIZE, dtype=np.int32), [0], 1)
    with pytest.raises(ex.ExplainError, match="Cannot explain"):
        ex.explain_lime(object(), image)


def _first_image(dataset: Path) -> Path:
    return sorted((dataset / "val" / "PNEUMONIA").iterdir())[0]


def test_cli_writes_five_pngs_and_json(tiny_run, synthetic_dataset, tmp_path):
    from PIL import Image

    runs_root, run_id = tiny_run
    out = tmp_path / "explained"
    proc = subprocess.run(
        [sys.executable, "-m", "xray_core", "explain", run_id, str(_first_image(synthetic_dataset)),
         "--out", str(out), "--samples", "128", "--segmentation", "grid", "--seed", "1",
         "--stability-seeds", "2", "--runs-dir", str(runs_root)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "deletion area" in proc.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted([*ex.PANEL_FILES.values(), ex.GRADCAM_FILE, ex.JSON_FILE])
    for name in [*ex.PANEL_FILES.values(), ex.GRADCAM_FILE]:
        with Image.open(out / name) as im:
            assert im.mode == "RGB" and max(im.size) == ex.DISPLAY_SIZE
    report = json.loads((out / ex.JSON_FILE).read_text())
    assert report["run_id"] == run_id
    # The probability the CLI reports is the model object's for that file (one forward path).
    from xray_core import imaging
    from xray_core.model import load_model

    model = load_model(run_id, root=runs_root)
    expected = model.predict_proba(model.prepare_batch([imaging.decode(_first_image(synthetic_dataset))]))[0]
    assert report["prediction"]["probability_pneumonia"] == pytest.approx(expected, abs=1e-6)
    lime = report["lime"]
    assert lime["num_samples"] == 128 and lime["seed"] == 1 and lime["segmentation"] == "grid"
    assert lime["sampling"] == "orthogonal" and lime["scale"] == "logit"  # the dashboard's recipe by default
    assert len(lime["weights"]) == lime["n_superpixels"]
    assert set(report["trust"]["deletion_area"]) == {"lime", "gradcam", "random"}
    assert report["trust"]["stability"]["seeds"] == [0, 1]
    assert lime["timings"]["model"] > 0


def test_cli_unknown_run_is_a_sentence(tiny_run, synthetic_dataset, tmp_path, capsys):
    from xray_core import cli

    runs_root, _ = tiny_run
    code = cli.main(["explain", "no-such-run", str(_first_image(synthetic_dataset)), "--out",
                     str(tmp_path / "o"), "--runs-dir", str(runs_root)])
    assert code == 1
    assert "no-such-run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("arch,shape", [("baseline", (36, 36, 3)), ("model3", (48, 48, 1))])
def test_fast_path_gives_the_models_own_numbers(arch, shape):
    """The look-up shortcut for conv-first chains equals scoring whole perturbed images."""
    import keras

    from xray_core import architectures

    keras.utils.set_random_seed(1)
    model = architectures.build(arch, input_shape=shape)
    # sharpen the untrained weights so that outputs vary visibly between samples
    model.set_weights([w * 3 for w in model.get_weights()])
    adapter = ex.as_adapter(model)
    x = adapter.prepare(blob_image(60, seed=2))
    for method, params in (("quickshift", None), ("slic", {"n_segments": 20})):
        segments = ex.segment(x, method, params=params)
        rows = lime_mod._sample_masks(int(segments.max()) + 1, 40, 0)
        fast = ex.make_scorer(adapter, x, segments)
        plain = ex.make_scorer(adapter, x, segments, fast=False)
        assert fast.fast and not plain.fast
        expected = plain(rows, 16)
        assert expected[:, 1].std() > 1e-3
        np.testing.assert_allclose(fast(rows, 16), expected, rtol=1e-4, atol=1e-6)
        direct = adapter.to_class_columns(np.asarray(model(fastscore._perturbed(x, segments, rows[:4]))).astype(np.float64))
        np.testing.assert_allclose(fast(rows[:4], 4), direct, rtol=1e-4, atol=1e-6)
    features_fn, scores_fn = fastscore._compiled_local(model, fastscore._local_plan(model), adapter.input_shape)
    assert features_fn.experimental_get_tracing_count() == 1
    assert scores_fn.experimental_get_tracing_count() == 1


def test_fast_path_falls_back_when_windows_touch_too_many_superpixels(monkeypatch):
    import keras

    from xray_core import architectures

    keras.utils.set_random_seed(0)
    model = architectures.build("model3", input_shape=(32, 32, 1))
    adapter = ex.as_adapter(model)
    x = adapter.prepare(blob_image(32))
    segments = ex.segment(x, "slic", params={"n_segments": 30})
    assert ex.make_scorer(adapter, x, segments).fast
    monkeypatch.setattr(fastscore, "MAX_TOUCHED", 1)
    assert not ex.make_scorer(adapter, x, segments).fast
    # a model that does not start with a local conv chain (quadrant model: crop first) is plain
    assert not ex.make_scorer(ex.as_adapter(quadrant_model()), blob_image()[..., None].astype(np.float32),
                              np.zeros((SIZE, SIZE), np.int32)).fast


def test_seed_two_unit_run_explains_pneumonia_on_a_normal_image(tmp_path):
    """A seed-style model (two sigmoid outputs) loaded as a run: on a film it calls NORMAL, LIME and
    Grad-CAM still explain P(pneumonia) (its column 1), not the NORMAL output."""
    from xray_core import fileio
    from xray_core.model import load_model

    net = quadrant_model(units=2)
    run = tmp_path / "seed-2unit"
    run.mkdir()
    net.save(run / "model.keras")
    fileio.atomic_write_json(run / "config.json", {"image_size": SIZE, "channels": 1, "output_units": 2})
    fileio.atomic_write_json(run / "metrics.json", {"threshold": 0.5})
    model = load_model(run)
    img = (blob_image() * 0.4).astype(np.uint8)  # a dim quadrant: P(pneumonia) below the threshold
    x = model.preprocess(img)[None]
    p = float(model.predict_proba(x)[0])
    raw = np.asarray(net(x))[0]
    assert p == pytest.approx(float(raw[1]), rel=1e-6) and p < 0.5  # a NORMAL verdict
    exp = ex.explain_lime(model, img, num_samples=400, segmentation="slic", seed=0, panels=False)
    assert exp.predicted_label == 0 and exp.label == 1 and exp.label_name == "PNEUMONIA"
    assert exp.label_score == pytest.approx(p, rel=1e-6)  # LIME fitted P(pneumonia) ...
    top = exp.top_abs[0]
    assert exp.weights[top] > 0 and _share_in_quadrant(exp.segments == top) > 0.9  # ... which the quadrant raises
    cam = ex.grad_cam(model, img)
    assert cam.label == 1 and cam.probability == pytest.approx(p, rel=1e-6)
    hy, hx = np.unravel_index(np.argmax(cam.heatmap), cam.heatmap.shape)
    assert hy < HALF and hx < HALF


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT.parent / "shared" / "data" / "chest_xray").is_dir(),
                    reason="the real dataset is absent (only on development machines)")
@pytest.mark.skipif(not (ROOT / "trained_models" / "default" / "model.json").is_file(),
                    reason="the bundled default model is absent")
def test_dashboard_lime_settings_on_a_real_film():
    """DEFAULT_LIME on the trained default and two 224 px validation films: >= 30 superpixels, and
    the top 5 by |weight| agree across seeds 0-4 (smallest pairwise pixel Jaccard >= 0.8, the
    issue's goal). IM-0323-0001 missed it (0.48) when LIME fitted the probability instead of its
    log-odds. Not every film reaches it: the share over 30 films, and the near-ties at rank 5/6
    where it is missed, are in benchmarks/reports/explain_samples.md."""
    from xray_core import imaging
    from xray_core.model import load_model

    model = load_model("default")
    s = ex.DEFAULT_LIME
    train = ROOT.parent / "shared" / "data" / "chest_xray" / "train"
    for path in (train / "PNEUMONIA" / "person1500_bacteria_3916.jpeg", train / "NORMAL" / "IM-0323-0001.jpeg"):
        gray = imaging.decode(path)
        assert gray.shape == (224, 224)
        steady = ex.stability(model, gray, seeds=5, **s)
        assert min(steady.n_superpixels) >= 30, (path.name, steady.n_superpixels)
        assert steady.jaccard_min >= 0.8, (path.name, steady.jaccard_min, steady.jaccard_mean)


def test_mean_fill_equals_lime_hide_color_none(model, image):
    """hide_color=None (a hidden superpixel shows its own mean) gives lime_image's weights for
    hide_color=None, and differs from the black fill."""
    from lime import lime_image

    exp = ex.explain_lime(model, image, num_samples=400, segmentation="slic", seed=3, panels=False,
                          hide_color=None)
    assert exp.hide_color is None and exp.to_dict()["hide_color"] is None
    adapter = ex.as_adapter(model)

    def classifier(rgb_batch):
        return adapter.class_probabilities(rgb_batch[..., :1].astype(np.float32))

    ref = lime_image.LimeImageExplainer(random_state=3).explain_instance(
        exp.model_input[..., 0].astype(np.float64), classifier, labels=(1,), hide_color=None, top_labels=None,
        num_samples=400, batch_size=256, segmentation_fn=lambda _img: exp.segments, random_seed=3)
    ref_weights = np.zeros(exp.n_superpixels)
    for k, w in ref.local_exp[1]:
        ref_weights[k] = w
    np.testing.assert_allclose(exp.weights, ref_weights, rtol=1e-5, atol=1e-8)
    black = ex.explain_lime(model, image, num_samples=400, segmentation="slic", seed=3, panels=False)
    assert not np.allclose(black.weights, exp.weights)


def chest_like_film(size: int = 224, seed: int = 0) -> np.ndarray:
    """A synthetic film at the dataset's size: dark lung fields either side of a bright mediastinum,
    ribs as faint bands, noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 150 + 40 * np.exp(-((x - 0.5) ** 2) / (2 * 0.06**2))
    for cx in (0.3, 0.7):
        img = img - 90 * np.exp(-((x - cx) ** 2 / (2 * 0.12**2) + (y - 0.5) ** 2 / (2 * 0.22**2)))
    img = img + 12 * np.sin(2 * np.pi * 9 * y) + rng.normal(0, 5, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("model_size", [192, 224])
def test_default_segmentation_gives_at_least_30_superpixels_on_a_224_px_film(model_size):
    """DEFAULT_LIME's segmentation on a 224 px film prepared for a 192 px (the bundled default) or
    224 px model: at least 30 superpixels, the same ones whatever the seed (no seeded tie-breaking)."""
    from xray_core import imaging

    settings = ex.DEFAULT_LIME
    x = imaging.to_model_input(chest_like_film(), (model_size, model_size), channels=1)
    segs = [ex.segment(x, settings["segmentation"], params=settings["segmentation_params"], seed=s) for s in range(3)]
    assert int(segs[0].max()) + 1 >= 30
    assert sorted(np.unique(segs[0])) == list(range(int(segs[0].max()) + 1))
    for other in segs[1:]:
        np.testing.assert_array_equal(other, segs[0])


def test_grid_segmentation_is_a_regular_grid():
    labels = ex.segment(np.zeros((192, 190, 1), np.float32), "grid", params={"rows": 6, "cols": 5})
    assert labels.shape == (192, 190) and int(labels.max()) + 1 == 30
    sizes = np.bincount(labels.ravel())
    assert sizes.min() >= 32 * 38 and sizes.max() <= 32 * 38  # 192/6 x 190/5 each
    assert labels[0, 0] == 0 and labels[0, -1] == 4 and labels[-1, 0] == 25
    with pytest.raises(ex.ExplainError, match="grid"):
        ex.segment(np.zeros((10, 10, 1), np.float32), "grid", params={"rows": 20, "cols": 2})
    with pytest.raises(ex.ExplainError, match="does not accept"):
        ex.segment(np.zeros((10, 10, 1), np.float32), "grid", params={"rows": 2, "cols": 2, "compactness": 3})


@pytest.mark.parametrize("sampling", ["paired", "paired_stratified"])
def test_paired_designs_are_complementary_pairs(sampling):
    from xray_core.explain.lime import _sample_masks

    data = _sample_masks(36, 101, seed=4, sampling=sampling)
    assert data.shape == (101, 36) and set(np.unique(data)) <= {0, 1}
    assert data[0].all() and not data[1].any()  # the image, then everything hidden
    np.testing.assert_array_equal(data[2:100:2], 1 - data[3:101:2])
    if sampling == "paired_stratified":
        off = 36 - data[2::2].sum(axis=1)
        assert off.min() >= 1 and off.max() <= 35 and len(np.unique(off)) > 10
    assert not np.array_equal(data, _sample_masks(36, 101, seed=5, sampling=sampling))
    with pytest.raises(ex.ExplainError, match="sampling"):
        _sample_masks(36, 10, 0, "sobol")


def test_orthogonal_design_is_balanced_orthogonal_and_folded_over():
    from itertools import combinations

    from xray_core.explain.lime import _sample_masks

    data = _sample_masks(36, 1024, seed=3, sampling="orthogonal")
    assert data.shape == (1024, 36) and set(np.unique(data)) == {0, 1}
    assert data[0].all() and not data[-1].any()  # the image; everything hidden
    assert (data.mean(axis=0) == 0.5).all()  # each superpixel hidden in exactly half the samples
    s = 2.0 * data - 1
    np.testing.assert_array_equal(s.T @ s, 1024 * np.eye(36))  # no two superpixels correlated
    rows = {tuple(r) for r in data}
    assert len(rows) == 1024 and all(tuple(1 - r) in rows for r in data)  # every complement is there
    pairs = np.stack([s[:, i] * s[:, j] for i, j in combinations(range(36), 2)], axis=1)
    assert not np.abs(s.T @ pairs).any()  # weights clear of every two-superpixel interaction
    # Few four-superpixel words (two pairs with the same product): each aliases a three-superpixel
    # interaction into a weight. 36 random odd columns of 1,024 form about 115.
    _, repeats = np.unique(pairs.T, axis=0, return_counts=True)
    assert (repeats * (repeats - 1) // 2).sum() // 3 <= 60
    assert not np.array_equal(data, _sample_masks(36, 1024, seed=4, sampling="orthogonal"))
    for bad in (1000, 64):  # not a power of two; fewer than twice the superpixels
        with pytest.raises(ex.ExplainError, match="power of two"):
            _sample_masks(36, bad, 0, "orthogonal")


def linear_logit_model(weights: np.ndarray, bias: float):
    """P(pneumonia) = sigmoid(sum(weights * pixels / 255) + bias): its log-odds are exactly additive."""
    import keras

    size = weights.shape[0]
    inp = keras.Input((size, size, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inp)
    x = keras.layers.Flatten(name="flat")(x)
    out = keras.layers.Dense(1, activation="sigmoid", name="output")(x)
    model = keras.Model(inp, out, name="linear_logit")
    model.get_layer("output").set_weights([weights.reshape(-1, 1).astype(np.float32), np.array([bias], np.float32)])
    return model


def test_a_top5_edge_is_a_near_tie_within_two_seed_spreads():
    """The 5th and 6th superpixels tie when their gap is within NEAR_TIE (2) seed-to-seed deviations;
    with no second segmentation to compare (quickshift differs by seed) there is no edge to judge."""
    base = dict(seeds=[0, 1, 2, 3, 4], jaccard_mean=0.9, jaccard_min=0.67, top_k=5, n_superpixels=[36] * 5)
    assert ex.Stability(**base, cut_margin=0.019, cut_spread=0.01).near_tie
    assert ex.Stability(**base, cut_margin=0.02, cut_spread=0.01).near_tie
    assert not ex.Stability(**base, cut_margin=0.021, cut_spread=0.01).near_tie
    assert not ex.Stability(**base).near_tie and ex.Stability(**base).to_dict()["near_tie"] is False
    assert ex.Stability(**base, cut_margin=0.0, cut_spread=0.01).to_dict()["near_tie"] is True


def test_logit_scale_recovers_additive_log_odds_exactly_and_the_probability_scale_does_not(image):
    """A model whose log-odds are a sum over pixels: with the orthogonal design, uniform weights and
    black fill, LIME on the log-odds gives each superpixel its own summed contribution (times ridge's
    known shrinkage m/4 / (m/4 + 1)), the same top 5 for every seed. Fitted on the probability, the
    sigmoid bends the answer and the weights are no longer proportional to the contributions."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.02, (SIZE, SIZE))
    w[:HALF, :HALF] += 0.03  # the top-left quadrant pushes towards pneumonia
    model = linear_logit_model(w, bias=-1.0)
    settings = dict(num_samples=256, segmentation="grid", segmentation_params={"rows": 6, "cols": 6},
                    hide_color=0.0, sampling="orthogonal", kernel_width=None, panels=False)
    exp = ex.explain_lime(model, image, seed=0, scale="logit", **settings)
    assert exp.scale == "logit" and exp.to_dict()["scale"] == "logit"
    pixels = exp.model_input[..., 0].astype(np.float64) / 255.0
    truth = np.bincount(exp.segments.ravel(), weights=(w * pixels).ravel(), minlength=exp.n_superpixels)
    shrink = (256 / 4) / (256 / 4 + 1)
    np.testing.assert_allclose(exp.weights, shrink * truth, rtol=1e-3, atol=2e-4)
    assert exp.local_prediction == pytest.approx(np.log(exp.probability / (1 - exp.probability)), abs=0.1)
    steady = ex.stability(model, image, seeds=5, scale="logit", **{k: v for k, v in settings.items() if k != "panels"})
    assert steady.jaccard_min == 1.0
    # the edge of the top 5: the known gap between the 5th and 6th contributions, no seed spread
    edge = np.sort(np.abs(truth))[::-1][4:6]
    assert steady.cut_margin == pytest.approx(shrink * (edge[0] - edge[1]), rel=1e-2)
    assert steady.cut_spread < 1e-4 and not steady.near_tie

    prob = ex.explain_lime(model, image, seed=0, scale="probability", **settings)
    ratio = prob.weights / truth
    assert ratio.std() / abs(ratio.mean()) > 0.05  # not one common factor: the sigmoid's curvature shows
    with pytest.raises(ex.ExplainError, match="scale"):
        ex.explain_lime(model, image, seed=0, scale="odds", **settings)


def test_paired_uniform_fit_cancels_even_interactions():
    """A score = linear part + a pairwise interaction (even under switching every superpixel):
    paired samples with uniform weights recover the linear part; lime's draws with its kernel do not."""
    from xray_core.explain.lime import _fit_local_model, _sample_masks

    rng = np.random.default_rng(0)
    beta = rng.normal(0, 1, 12)

    def score(d):
        s = 2 * d - 1  # +-1 coding: s_i * s_j is unchanged when every superpixel switches
        return d @ beta + 0.8 * s[:, 0] * s[:, 1] + 0.5 * s[:, 2] * s[:, 5]

    paired = _sample_masks(12, 400, 0, "paired")
    w, *_ = _fit_local_model(paired, score(paired), kernel_width=None)
    np.testing.assert_allclose(w, beta, rtol=0.02, atol=0.02)  # only the ridge penalty's ~1 % shrinkage is left
    lime_draws = _sample_masks(12, 400, 0, "lime")
    w_lime, *_ = _fit_local_model(lime_draws, score(lime_draws))
    assert np.max(np.abs(w_lime - beta) / np.abs(beta)) > 0.5
    w_kernel, *_ = _fit_local_model(paired, score(paired), kernel_width=0.25)  # the kernel breaks the pairs
    assert np.max(np.abs(w_kernel - beta) / np.abs(beta)) > 0.5


def test_deletion_uses_the_fill_the_explanation_used(model, image):
    """deletion_curve hides with the explanation's fill; the mean fill's end point is the image of
    superpixel means, not black; trust_figures follows the explanation's fill and says which."""
    exp = ex.explain_lime(model, image, num_samples=200, segmentation="grid", seed=0, panels=False,
                          hide_color=None, sampling="paired", kernel_width=None)
    assert exp.sampling == "paired" and exp.kernel_width is None and exp.to_dict()["sampling"] == "paired"
    order = ex.lime_order(exp.weights)
    mean_curve = ex.deletion_curve(model, image, exp.segments, order, 1, hide_color=None)
    black_curve = ex.deletion_curve(model, image, exp.segments, order, 1, hide_color=0.0)
    adapter = ex.as_adapter(model)
    x = adapter.prepare(image)
    from xray_core.explain.lime import hidden_fill

    means = hidden_fill(x, exp.segments, None)
    assert mean_curve.probabilities[-1] == pytest.approx(adapter.class_probabilities(means)[0, 1], abs=1e-6)
    assert black_curve.probabilities[-1] == pytest.approx(adapter.class_probabilities(np.zeros_like(x))[0, 1], abs=1e-6)
    assert mean_curve.probabilities[0] == pytest.approx(black_curve.probabilities[0], abs=1e-9)
    assert not np.allclose(mean_curve.probabilities, black_curve.probabilities)
    trust = ex.trust_figures(model, image, exp, seeds=2)
    assert trust["deletion_fill"] == "superpixel mean"
    assert trust["deletion_curves"]["lime"]["probabilities"] == pytest.approx(mean_curve.probabilities)


def test_panel_help_shows_the_measured_faithfulness_with_its_fill(tmp_path, monkeypatch):
    """The panels' help quotes the faithfulness report: deletion areas, the fill they were measured
    with, and how many films kept their top 5 across seeds; the shipped report is the one quoted."""
    from app import diagnose_view as view

    shipped = json.loads(view.FAITHFULNESS_REPORT.read_text())
    assert f"{shipped['mean_deletion_area']['lime']:.3f}" in view.panel_help()["full"]
    report = {"run": "r1", "n_images": 50, "deletion_fill": "each superpixel's mean",
              "mean_deletion_area": {"lime": 0.4321, "gradcam": 0.5, "random": 0.6},
              "stability": {"films": [{"meets": True}, {"meets": False}, {"meets": True}]}}
    path = tmp_path / "faith.json"
    path.write_text(json.dumps(report))
    monkeypatch.setattr(view, "FAITHFULNESS_REPORT", path)
    text = view.panel_help()["gradcam"]
    assert "0.432" in text and "each superpixel's mean" in text and "2 of 3 films" in text
    assert "within LIME's precision" not in text  # the film that moved was not a near-tie
    report["stability"]["films"] += [{"meets": False, "near_tie": True}]
    path.write_text(json.dumps(report))
    assert "2 of 4 films" in view.panel_help()["full"] and "(1 of 2 such films)" in view.panel_help()["full"]
    monkeypatch.setattr(view, "FAITHFULNESS_REPORT", tmp_path / "absent.json")
    assert "deletion area" not in view.panel_help()["full"]


def test_lime_settings_give_diagnose_report_and_cli_one_recipe(model, image):
    """lime_settings is the one place the recipes live: the dashboard's is DEFAULT_LIME (a copy the
    caller may change), a new segmentation takes its own parameters, and the seed's recipe is
    explain_lime's own defaults (quickshift, 1,000 random samples, black fill, probability)."""
    dashboard = ex.lime_settings()
    assert dashboard == ex.DEFAULT_LIME and dashboard["segmentation_params"] is not ex.DEFAULT_LIME["segmentation_params"]
    assert ex.lime_settings(num_samples=256)["num_samples"] == 256
    assert ex.lime_settings(segmentation="grid")["segmentation_params"] is None
    assert ex.lime_settings(segmentation="slic")["segmentation_params"] == ex.DEFAULT_LIME["segmentation_params"]
    assert ex.lime_settings("seed") == {}
    assert ex.lime_settings("seed", num_samples=300, segmentation="slic") == {
        "num_samples": 300, "segmentation": "slic", "segmentation_params": None}
    with pytest.raises(ex.ExplainError, match="dashboard, seed"):
        ex.lime_settings("lime")
    seed_call = ex.explain_lime(model, image, seed=3, panels=False, **ex.lime_settings("seed", num_samples=200))
    plain = ex.explain_lime(model, image, seed=3, panels=False, num_samples=200)
    assert (seed_call.segmentation, seed_call.sampling, seed_call.scale) == ("quickshift", "lime", "probability")
    assert np.array_equal(seed_call.weights, plain.weights)
