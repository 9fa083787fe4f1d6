"""xray_core.explain on models whose answer is known, against lime itself, and through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from xray_core import explain as ex
from xray_core.explain import gradcam as gradcam_mod, lime as lime_mod, panels as panels_mod

ROOT = Path(__file__).resolve().parents[1]
SIZE = 48
HALF = SIZE // 2
# The seed study's call (lime's random draws, black fill, its kernel, the probability) on SLIC
# superpixels sized for these 48 px images.
SEED_SLIC = dict(ex.lime_settings("seed", segmentation="slic"), segmentation_params={"n_segments": 60, "compactness": 10.0})


def quadrant_model(size: int = SIZE, units: int = 1, channels: int = 1):
    """p = sigmoid(40 * mean(conv map) - 3.5), where the conv map is zero outside the top-left
    quadrant (cropped, then padded back so positions stay aligned): only that quadrant matters.
    With 3 channels the conv averages them, so a gray film gets the 1-channel model's answer."""
    import keras

    h = size // 2
    inp = keras.Input((size, size, channels), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inp)
    x = keras.layers.Cropping2D(((0, h), (0, h)), name="crop")(x)
    x = keras.layers.ZeroPadding2D(((0, h), (0, h)), name="pad")(x)
    x = keras.layers.Conv2D(1, 3, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    out = keras.layers.Dense(units, activation="sigmoid", name="output")(x)
    model = keras.Model(inp, out, name="quadrant")
    model.get_layer("conv").set_weights([np.full((3, 3, channels, 1), 1 / (9 * channels), np.float32),
                                         np.zeros(1, np.float32)])
    if units == 1:
        w, b = np.array([[40.0]]), np.array([-3.5])
    else:  # column 0 falls and column 1 rises with the quadrant's brightness
        w, b = np.array([[-40.0, 40.0]]), np.array([3.5, -3.5])
    model.get_layer("output").set_weights([w.astype(np.float32), b.astype(np.float32)])
    return model


def as_model(network, folder: Path, *, threshold: float = 0.5):
    """A run folder holding `network` (saved, never trained), loaded as the product's Model."""
    from xray_core import fileio
    from xray_core.model import load_model

    folder.mkdir(parents=True)
    network.save(folder / "model.keras")
    shape = network.inputs[0].shape
    fileio.atomic_write_json(folder / "config.json", {"image_size": [int(shape[1]), int(shape[2])],
                                                      "channels": int(shape[3])})
    fileio.atomic_write_json(folder / "metrics.json", {"threshold": threshold})
    return load_model(folder)


def blob_image(size: int = SIZE, seed: int = 0) -> np.ndarray:
    """Three bright blobs on a noisy gradient: one in the top-left quadrant, two elsewhere."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    img = 70 + 30 * x + rng.normal(0, 6, (size, size))
    for cy, cx in ((0.25, 0.25), (0.75, 0.75), (0.25, 0.75)):
        img = img + 170 * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * 0.07**2))
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def network():
    return quadrant_model()


@pytest.fixture(scope="module")
def model(network, tmp_path_factory):
    return as_model(network, tmp_path_factory.mktemp("runs") / "quadrant")


@pytest.fixture(scope="module")
def image():
    return blob_image()


@pytest.fixture(scope="module")
def explanation(model, image):
    return ex.explain_lime(model, image, seed=0, **dict(SEED_SLIC, num_samples=600))


def _share_in_quadrant(mask: np.ndarray) -> float:
    return float(mask[:HALF, :HALF].sum() / mask.sum())


def _lime_weights(local_exp, n: int) -> np.ndarray:
    weights = np.zeros(n)
    for k, w in local_exp:
        weights[k] = w
    return weights


def test_import_loads_neither_tensorflow_nor_lime():
    code = ("import sys, xray_core.explain; loaded = {'tensorflow', 'lime', 'sklearn'} & set(sys.modules); "
            "assert not loaded, loaded")
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
    assert cam.probability == pytest.approx(exp.probability, abs=1e-7)
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


@pytest.mark.parametrize("hide_color,scale", [(0.0, "probability"), (None, "probability"), (None, "logit")])
def test_weights_equal_lime_library(model, image, hide_color, scale):
    """With lime's own draws (sampling="lime"), its kernel and the same random_state, explain_lime
    gives lime_image.LimeImageExplainer.explain_instance's weights, intercept, R^2 and local
    prediction, for black and mean fills and with the log-odds as the classifier's output."""
    from lime import lime_image

    from xray_core.model import logit

    exp = ex.explain_lime(model, image, seed=3, **dict(SEED_SLIC, num_samples=400, hide_color=hide_color, scale=scale))

    def classifier(rgb_batch):  # lime turns the gray image into RGB; the model takes 1 channel
        scores = lime_mod.class_scores(model, rgb_batch)
        return scores if scale == "probability" else logit(scores)

    ref = lime_image.LimeImageExplainer(random_state=3).explain_instance(
        exp.model_input[..., 0].astype(np.float64), classifier, labels=(1,), hide_color=hide_color,
        top_labels=None, num_samples=400, batch_size=100, segmentation_fn=lambda _img: exp.segments, random_seed=3)
    np.testing.assert_allclose(exp.weights, _lime_weights(ref.local_exp[1], exp.n_superpixels), rtol=1e-9, atol=1e-12)
    assert exp.intercept == pytest.approx(ref.intercept[1], rel=1e-9)
    assert exp.score == pytest.approx(ref.score, rel=1e-9)
    assert exp.local_prediction == pytest.approx(float(ref.local_pred[0]), rel=1e-9)
    black = ex.explain_lime(model, image, seed=3, **dict(SEED_SLIC, num_samples=400, scale=scale))
    assert (hide_color is not None) == np.allclose(black.weights, exp.weights)


def test_a_three_channel_model_gets_its_channels(model, image, tmp_path):
    """lime hands over RGB images: a 3-channel model is given three equal channels, a 1-channel
    model one; the same network over 1 or 3 channels gives the same explanation."""
    rgb_model = as_model(quadrant_model(channels=3), tmp_path / "rgb")
    assert rgb_model.channels == 3
    for settings in ({}, dict(SEED_SLIC, num_samples=300)):
        rgb = ex.explain_lime(rgb_model, image, seed=2, **settings)
        gray = ex.explain_lime(model, image, seed=2, **settings)
        assert rgb.model_input.shape == (SIZE, SIZE, 3) and gray.model_input.shape == (SIZE, SIZE, 1)
        assert rgb.probability == pytest.approx(gray.probability, rel=1e-5)
        np.testing.assert_allclose(rgb.weights, gray.weights, rtol=1e-3, atol=1e-4 * np.abs(gray.weights).max())
        assert rgb.top_abs[:2] == gray.top_abs[:2]


def test_quickshift_matches_the_seed_recipe(image):
    from lime.wrappers.scikit_image import SegmentationAlgorithm

    model_input = image[..., None].astype(np.float32)
    ours = ex.segment(model_input, "quickshift", seed=42)
    seed_fn = SegmentationAlgorithm("quickshift", kernel_size=4, max_dist=200, ratio=0.2)
    theirs = seed_fn(np.repeat(model_input / 255.0, 3, axis=2).astype(np.float64))
    _, theirs = np.unique(theirs, return_inverse=True)
    np.testing.assert_array_equal(ours, theirs.reshape(ours.shape))


def test_same_seed_same_weights_other_seed_differs(model, image, explanation):
    again = ex.explain_lime(model, image, seed=0, **dict(SEED_SLIC, num_samples=600))
    np.testing.assert_array_equal(again.weights, explanation.weights)
    np.testing.assert_array_equal(again.segments, explanation.segments)
    other = ex.explain_lime(model, image, seed=1, **dict(SEED_SLIC, num_samples=600))
    assert not np.array_equal(other.weights, explanation.weights)


def test_normal_is_explained_as_one_minus_p(model, image, explanation):
    normal = ex.explain_lime(model, image, label="NORMAL", seed=0, **dict(SEED_SLIC, num_samples=600))
    assert normal.label == 0 and normal.predicted_label == 1
    np.testing.assert_allclose(normal.weights, -explanation.weights, atol=1e-9)
    assert normal.intercept == pytest.approx(1 - explanation.intercept)
    assert normal.label_score == pytest.approx(1 - explanation.probability)


def test_progress_is_reported_and_cancel_stops_between_batches(model, image):
    """progress(done, total) after each batch of the model; a set Event (or a callable returning
    True) stops the call before the next batch with ExplainCancelled."""
    seen = []
    exp = ex.explain_lime(model, image, batch_size=100, progress=lambda done, total: seen.append((done, total)))
    assert exp.num_samples == 512 and seen == [(100, 512), (200, 512), (300, 512), (400, 512), (500, 512), (512, 512)]
    stop = threading.Event()
    seen.clear()

    def progress(done, total):
        seen.append(done)
        if done >= 200:
            stop.set()

    with pytest.raises(ex.ExplainCancelled, match="200 of 512"):
        ex.explain_lime(model, image, batch_size=100, progress=progress, cancel=stop)
    assert seen == [100, 200]
    with pytest.raises(ex.ExplainCancelled, match="0 of 512"):
        ex.explain_lime(model, image, cancel=lambda: True)


def test_panels_any_input_size_and_rgb_input(model):
    for shape in [(30, 50), (200, 120), (SIZE, SIZE, 3)]:
        rng = np.random.default_rng(1)
        img = rng.integers(0, 256, size=shape, dtype=np.uint8)
        exp = ex.explain_lime(model, img, seed=3, **ex.lime_settings("seed", num_samples=128))
        panels = ex.lime_panels(img, exp)
        h, w = shape[:2]
        H, W = ex.display_shape((h, w))
        assert max(H, W) == ex.DISPLAY_SIZE >= 448
        assert abs(H / W - h / w) < 0.02
        assert exp.segments.shape == (SIZE, SIZE)
        for name, panel in panels.as_dict().items():
            assert panel.shape == (H, W, 3) and panel.dtype == np.uint8, name
        assert panels.legend.vmax == pytest.approx(np.abs(exp.weights).max())
        assert panels.legend.vmin == -panels.legend.vmax and panels.legend.cmap == "RdBu"
        assert len(exp.top_abs) == min(5, exp.n_superpixels)
        assert all(exp.weights[k] > 0 for k in exp.top_supporting)


def test_panels_show_what_they_promise(image, explanation):
    exp = explanation
    p = ex.lime_panels(image, exp)
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
    drawn = SimpleNamespace(segments=seg, weights=np.array([-0.3, -0.1, 0.0, 0.2]), top_supporting=[3],
                            top_abs=[0, 3, 1, 2])
    panels = ex.lime_panels(np.full((8, 8), 128, np.uint8), drawn, display_size=64)
    assert panels.legend.vmin == -0.3 and panels.legend.vmax == 0.3
    lut = panels_mod._colormap_lut("RdBu")
    big = ex.upsample_nearest(seg, (64, 64))
    inner = ~ex.boundaries(big)
    assert (panels.heatmap[(big == 0) & inner] == lut[0]).all()  # -0.3 -> the map's red end
    assert (panels.heatmap[(big == 2) & inner] == lut[128]).all()  # 0 -> the centre


def test_few_superpixels_are_handled(model):
    flat = np.full((SIZE, SIZE), 90, np.uint8)
    exp = ex.explain_lime(model, flat, **ex.lime_settings("seed", num_samples=50))
    n = exp.n_superpixels
    assert 1 <= n < 5
    assert sorted(exp.top_abs) == list(range(n)) and len(exp.top_supporting) <= min(2, n)
    assert ex.lime_panels(flat, exp).heatmap.dtype == np.uint8
    curve = ex.deletion_curve(model, flat, exp.segments, ex.lime_order(exp.weights), exp.label)
    assert len(curve.fractions) == n + 1 and curve.fractions[-1] == 1.0


def test_grad_cam_traces_once(model, image):
    ex.grad_cam(model, image)
    ex.grad_cam(model, image, label=0)
    ex.grad_cam(model, blob_image(seed=5))
    fn = gradcam_mod._compiled(model.members[0], "conv", (SIZE, SIZE, 1))
    assert fn.experimental_get_tracing_count() == 1


@pytest.mark.parametrize("arch", ["baseline", "model3", "model4"])
def test_grad_cam_for_seed_architectures(arch, tmp_path):
    import keras

    from xray_core import architectures

    keras.utils.set_random_seed(0)
    model = as_model(architectures.build(arch, input_shape=(40, 40, 1)), tmp_path / arch)
    img = blob_image(70)
    cam = ex.grad_cam(model, img)
    layer = model.members[0].get_layer(cam.layer)
    assert cam.heatmap.shape == tuple(layer.output.shape[1:3])
    assert np.isfinite(cam.heatmap).all() and 0 <= cam.heatmap.min() <= cam.heatmap.max() <= 1
    overlay = ex.make_overlay(img, cam.heatmap)
    assert overlay.shape == (ex.DISPLAY_SIZE, ex.DISPLAY_SIZE, 3) and overlay.dtype == np.uint8


def test_errors_are_sentences(model, network, image):
    with pytest.raises(ex.ExplainError, match="quickshift"):
        ex.explain_lime(model, image, segmentation="watershed")
    with pytest.raises(ex.ExplainError, match="label"):
        ex.explain_lime(model, image, label=2)
    with pytest.raises(ex.ExplainError, match="uint8"):
        ex.explain_lime(model, image.astype(np.float32))
    with pytest.raises(ex.ExplainError, match="every superpixel"):
        ex.deletion_curve(model, image, np.zeros((SIZE, SIZE), np.int32) + np.eye(SIZE, dtype=np.int32), [0], 1)
    for wrong in (object(), network):  # a bare Keras network is not a run's model
        with pytest.raises(ex.ExplainError, match="Cannot explain.*load_model"):
            ex.explain_lime(wrong, image)
        with pytest.raises(ex.ExplainError, match="Cannot explain"):
            ex.grad_cam(wrong, image)


def _first_image(dataset: Path) -> Path:
    return sorted((dataset / "val" / "PNEUMONIA").iterdir())[0]


def test_cli_writes_five_pngs_and_json(tiny_run, synthetic_dataset, tmp_path):
    from PIL import Image

    runs_root, run_id = tiny_run
    out = tmp_path / "explained"
    proc = subprocess.run(
        [sys.executable, "-m", "xray_core", "explain", run_id, str(_first_image(synthetic_dataset)),
         "--out-dir", str(out), "--samples", "128", "--segmentation", "grid", "--seed", "1",
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
    code = cli.main(["explain", "no-such-run", str(_first_image(synthetic_dataset)), "--out-dir",
                     str(tmp_path / "o"), "--runs-dir", str(runs_root)])
    assert code == 1
    assert "no-such-run" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


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
    exp = ex.explain_lime(model, img, seed=0, **dict(SEED_SLIC, num_samples=400))
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
    the top 5 by |weight| agree across seeds 0-4 (smallest pairwise pixel Jaccard >= 0.8). Not every
    film reaches it: the share over 30 films, and the near-ties at rank 5/6 where it is missed, are
    in benchmarks/reports/explain_samples.md."""
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


def _design(n: int, m: int, seed: int, sampling: str) -> np.ndarray:
    return lime_mod.sample_masks(n, m, np.random.RandomState(seed), sampling)


def test_lime_design_is_lime_own_stream_and_other_designs_are_refused():
    data = _design(36, 101, 4, "lime")
    expected = np.random.RandomState(4).randint(0, 2, 101 * 36).reshape((101, 36))  # lime's data_labels
    expected[0, :] = 1  # the image itself
    np.testing.assert_array_equal(data, expected)
    for unknown in ("sobol", "paired"):
        with pytest.raises(ex.ExplainError, match="sampling"):
            _design(36, 10, 0, unknown)


def test_orthogonal_design_is_balanced_orthogonal_and_folded_over():
    from itertools import combinations

    data = _design(36, 1024, 3, "orthogonal")
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
    assert not np.array_equal(data, _design(36, 1024, 4, "orthogonal"))
    for bad in (1000, 64):  # not a power of two; fewer than twice the superpixels
        with pytest.raises(ex.ExplainError, match="power of two"):
            _design(36, bad, 0, "orthogonal")


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


def test_logit_scale_recovers_additive_log_odds_exactly_and_the_probability_scale_does_not(image, tmp_path):
    """A model whose log-odds are a sum over pixels: with the orthogonal design, uniform weights and
    black fill, LIME on the log-odds gives each superpixel its own summed contribution (times ridge's
    known shrinkage m/4 / (m/4 + 1)), the same top 5 for every seed. Fitted on the probability, the
    sigmoid bends the answer and the weights are no longer proportional to the contributions."""
    rng = np.random.default_rng(1)
    w = rng.normal(0, 0.02, (SIZE, SIZE))
    w[:HALF, :HALF] += 0.03  # the top-left quadrant pushes towards pneumonia
    model = as_model(linear_logit_model(w, bias=-1.0), tmp_path / "linear")
    settings = dict(num_samples=256, segmentation="grid", segmentation_params={"rows": 6, "cols": 6}, hide_color=0.0)
    exp = ex.explain_lime(model, image, seed=0, **settings)  # the dashboard's design, weights and scale
    assert (exp.scale, exp.sampling, exp.kernel_width) == ("logit", "orthogonal", None)
    assert exp.to_dict()["scale"] == "logit"
    pixels = exp.model_input[..., 0].astype(np.float64) / 255.0
    truth = np.bincount(exp.segments.ravel(), weights=(w * pixels).ravel(), minlength=exp.n_superpixels)
    shrink = (256 / 4) / (256 / 4 + 1)
    np.testing.assert_allclose(exp.weights, shrink * truth, rtol=1e-3, atol=2e-4)
    assert exp.local_prediction == pytest.approx(np.log(exp.probability / (1 - exp.probability)), abs=0.1)
    steady = ex.stability(model, image, seeds=5, **settings)
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


def test_deletion_uses_the_fill_the_explanation_used(model, image):
    """deletion_curve hides with the explanation's fill; the mean fill's end point is the image of
    superpixel means, not black; trust_figures follows the explanation's fill and says which."""
    exp = ex.explain_lime(model, image, num_samples=200, segmentation="grid", seed=0, sampling="lime")
    assert exp.sampling == "lime" and exp.hide_color is None and exp.to_dict()["sampling"] == "lime"
    order = ex.lime_order(exp.weights)
    mean_curve = ex.deletion_curve(model, image, exp.segments, order, 1, hide_color=None)
    black_curve = ex.deletion_curve(model, image, exp.segments, order, 1, hide_color=0.0)
    x = model.preprocess(image)
    means = lime_mod.hidden_fill(x, exp.segments, None).astype(np.float32)
    assert mean_curve.probabilities[-1] == pytest.approx(model.predict_proba(means[None])[0], abs=1e-6)
    assert black_curve.probabilities[-1] == pytest.approx(model.predict_proba(np.zeros_like(x)[None])[0], abs=1e-6)
    assert mean_curve.probabilities[0] == pytest.approx(black_curve.probabilities[0], abs=1e-9)
    assert not np.allclose(mean_curve.probabilities, black_curve.probabilities)
    trust = ex.trust_figures(model, image, exp, seeds=2)
    assert trust["deletion_fill"] == "superpixel mean"
    assert trust["deletion_curves"]["lime"]["probabilities"] == pytest.approx(mean_curve.probabilities)


def test_each_panel_has_one_line_and_the_measured_trust_is_said_once(tmp_path, monkeypatch):
    """Under each panel one short line on how to read it; the faithfulness report (deletion areas, the
    fill they were measured with, how many films kept their top 5 across seeds) is quoted once, in the
    expander's text; the shipped report is the one quoted."""
    from app import diagnose_view as view

    helps = view.panel_help(0.25, "logit")
    assert set(helps) == set(view.PANEL_TITLES)
    assert all(len(line) <= 100 and "deletion" not in line for line in helps.values()), helps
    assert "log-odds" in helps["heatmap"] and "0.25" in helps["heatmap"]
    assert "probability of pneumonia" in view.panel_help()["heatmap"]

    shipped = json.loads(view.FAITHFULNESS_REPORT.read_text())
    assert f"{shipped['mean_deletion_area']['lime']:.3f}" in view.trust_text()
    report = {"run": "r1", "n_images": 50, "deletion_fill": "each superpixel's mean",
              "mean_deletion_area": {"lime": 0.4321, "gradcam": 0.5, "random": 0.6},
              "stability": {"seeds": 5, "goal_jaccard": 0.8,
                            "films": [{"meets": True}, {"meets": False}, {"meets": True}]}}
    path = tmp_path / "faith.json"
    path.write_text(json.dumps(report))
    monkeypatch.setattr(view, "FAITHFULNESS_REPORT", path)
    text = view.trust_text()
    assert "0.432" in text and "each superpixel's mean" in text and "2 of 3 films" in text
    assert "over 5 random seeds" in text and "at least 0.8" in text
    assert "within LIME's precision" not in text  # the film that moved was not a near-tie
    report["stability"]["films"] += [{"meets": False, "near_tie": True}]
    path.write_text(json.dumps(report))
    assert "2 of 4 films" in view.trust_text() and "(1 of 2 such films)" in view.trust_text()
    monkeypatch.setattr(view, "FAITHFULNESS_REPORT", tmp_path / "absent.json")
    assert view.trust_text() == ""


def test_lime_settings_give_diagnose_report_and_cli_one_recipe(model, image):
    """lime_settings is the one place the recipes live: the dashboard's is DEFAULT_LIME and
    explain_lime's own defaults, the seed study's call is SEED_LIME (copies the caller may change),
    and a new segmentation takes its own parameters."""
    dashboard = ex.lime_settings()
    assert dashboard == ex.DEFAULT_LIME and dashboard["segmentation_params"] is not ex.DEFAULT_LIME["segmentation_params"]
    assert ex.lime_settings(num_samples=256)["num_samples"] == 256
    assert ex.lime_settings(segmentation="grid")["segmentation_params"] is None
    assert ex.lime_settings(segmentation="slic")["segmentation_params"] == ex.DEFAULT_LIME["segmentation_params"]
    assert ex.lime_settings("seed") == ex.SEED_LIME == {
        "segmentation": "quickshift", "segmentation_params": {"kernel_size": 4, "max_dist": 200, "ratio": 0.2},
        "num_samples": 1000, "hide_color": 0.0, "sampling": "lime", "kernel_width": 0.25, "scale": "probability"}
    assert ex.lime_settings("seed", num_samples=300, segmentation="slic") == dict(
        ex.SEED_LIME, num_samples=300, segmentation="slic", segmentation_params=None)
    with pytest.raises(ex.ExplainError, match="dashboard, seed"):
        ex.lime_settings("lime")
    plain = ex.explain_lime(model, image, seed=3)
    assert plain.settings() == ex.DEFAULT_LIME
    assert np.array_equal(ex.explain_lime(model, image, seed=3, **dashboard).weights, plain.weights)
    seed_call = ex.explain_lime(model, image, seed=3, **ex.lime_settings("seed", num_samples=200))
    assert seed_call.settings() == dict(ex.SEED_LIME, num_samples=200)
