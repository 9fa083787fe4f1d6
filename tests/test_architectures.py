"""The four seed architectures: parameter counts, names, settings checks, pneumonia metrics."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from xray_core import architectures as A  # noqa: E402

SEED_PARAMS_3CH = {"baseline": 1_282_482, "model2": 2_570_322, "model3": 1_341_474,
                   "model4": 385_010}


def _conv(k, c_in, f):
    return k * k * c_in * f + f


def _dense(n_in, n_out):
    return n_in * n_out + n_out


def _expected_params(name: str, channels: int, size: int = 100) -> int:
    """Parameter count from the seed tables' layer arithmetic, independent of Keras."""
    if name == "baseline":
        return _conv(5, channels, 32) + _dense((size // 2) ** 2 * 32, 16) + _dense(16, 2)
    if name == "model2":
        return (_conv(5, channels, 128) + _dense((size // 4) ** 2 * 128, 32) + _dense(32, 16)
                + _dense(16, 2))
    if name == "model3":
        return (_conv(5, channels, 256) + _dense(256, 128) + _dense(128, 64)
                + _dense((size // 4) ** 2 * 64, 32) + _dense(32, 16) + _dense(16, 16)
                + _dense(16, 2))
    if name == "model4":
        side = ((size // 2 - 3) // 4) // 4
        return (_conv(5, channels, 256) + _dense(256, 128) + _conv(4, 128, 128) + _dense(128, 64)
                + _dense(64, 32) + _conv(5, 32, 64) + _dense(side * side * 64, 32)
                + _dense(32, 16) + _dense(16, 2))
    raise AssertionError(name)


@pytest.mark.parametrize("name", list(SEED_PARAMS_3CH))
def test_seed_parameter_counts(name):
    spec = A.ARCHITECTURES[name]
    three = spec.builder(input_shape=(100, 100, 3))
    one = spec.builder(input_shape=(100, 100, 1))
    assert three.count_params() == SEED_PARAMS_3CH[name] == _expected_params(name, 3)
    assert one.count_params() == _expected_params(name, 1)
    # Only the first convolution sees the channels: 5*5*2*filters fewer weights.
    filters = three.get_layer("conv1").filters
    assert three.count_params() - one.count_params() == 50 * filters


@pytest.mark.parametrize("name", list(SEED_PARAMS_3CH))
def test_layers_named_and_rescaled(name):
    model = A.ARCHITECTURES[name].builder(input_shape=(64, 64, 1))
    names = [layer.name for layer in model.layers]
    assert len(set(names)) == len(names)
    assert names[0] == "image" and names[1] == "rescale"
    rescale = model.get_layer("rescale")
    assert isinstance(rescale, keras.layers.Rescaling) and rescale.count_params() == 0
    assert rescale.scale == pytest.approx(1 / 255)
    head = model.layers[-1]
    assert head.units == 2 and head.activation.__name__ == "sigmoid"
    assert model.output.shape[-1] == A.ARCHITECTURES[name].output_units


def test_seed_defaults():
    got = {n: (s.epochs, s.batch_size, s.image_size, s.channels, s.output_units)
           for n, s in A.ARCHITECTURES.items() if n in SEED_PARAMS_3CH}
    assert got == {"baseline": (5, 32, 100, 1, 2), "model2": (5, 32, 100, 1, 2),
                   "model3": (10, 64, 100, 1, 2), "model4": (15, 64, 100, 1, 2)}
    assert all(len(s.description) > 30 for s in A.ARCHITECTURES.values())


def test_model4_layers_match_seed_table():
    table = A.layer_table("model4", (100, 100, 3))
    assert list(table.columns) == ["layer", "type", "config", "output shape", "params"]
    assert table["params"].sum() == 385_010
    shapes = dict(zip(table["layer"], table["output shape"]))
    assert shapes["conv2"] == "(47, 47, 128)" and shapes["pool3"] == "(2, 2, 64)"
    assert shapes["flatten"] == "256"
    kinds = dict(zip(table["layer"], table["type"]))
    assert kinds["pixel_dense1"] == "Dense (per pixel)" and kinds["dense1"] == "Dense"
    assert "sigmoid" in table.set_index("layer").loc["conv3", "config"]
    assert "valid" in table.set_index("layer").loc["conv2", "config"]


def test_last_conv_layer_names():
    expected = {"baseline": "conv1", "model2": "conv1", "model3": "pixel_dense2",
                "model4": "conv3"}
    for name, layer in expected.items():
        model = A.ARCHITECTURES[name].builder(input_shape=(64, 64, 1))
        assert A.last_conv_layer_name(model) == layer
        assert len(model.get_layer(layer).output.shape) == 4
    flat = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, name="d")], name="flat")
    with pytest.raises(ValueError, match="no convolution"):
        A.last_conv_layer_name(flat)


@pytest.mark.parametrize("bad, match", [
    ({"name": "resnet"}, "unknown architecture 'resnet'"),
    ({"input_shape": (64, 64, 2)}, "got 2"),
    ({"input_shape": (64, 64)}, r"\(64, 64\)"),
    ({"name": "model4", "input_shape": (32, 32, 1)}, "at least 38x38"),
    ({"learning_rate": 0}, "got 0"),
    ({"learning_rate": "fast"}, "'fast'"),
])
def test_build_rejects_bad_settings(bad, match):
    kwargs = {"name": "baseline", "input_shape": (64, 64, 1), "learning_rate": 1e-3, **bad}
    with pytest.raises(ValueError, match=match):
        A.build(kwargs.pop("name"), **kwargs)


def test_build_compiles_like_the_seed():
    model = A.build("baseline", (40, 40, 3), learning_rate=1e-3)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    assert float(model.optimizer.learning_rate) == pytest.approx(1e-3)
    assert isinstance(model.loss, keras.losses.BinaryCrossentropy)


# Hand-made predictions: pneumonia column scores vs labels, threshold 0.5.
# labels 1,1,1,1,0,0,0,0,0,0 ; scores .9,.8,.6,.3,.7,.2,.1,.4,.45,.05
# -> TP 3, FN 1, FP 1, TN 5: sens .75, spec 5/6, prec .75, acc .8
LABELS = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
SCORES = np.array([.9, .8, .6, .3, .7, .2, .1, .4, .45, .05], dtype="float32")
EXPECTED = {"accuracy": 0.8, "sensitivity": 0.75, "specificity": 5 / 6, "precision": 0.75,
            "auc": 20 / 24}  # 20 of 24 (pos, neg) pairs ranked right


@pytest.mark.parametrize("units", [1, 2])
def test_compile_metrics_use_the_pneumonia_column(units):
    y_true = A.encode_targets(LABELS, units)
    if units == 2:
        # A NORMAL column that disagrees with the pneumonia one must not change anything.
        y_pred = np.stack([1 - SCORES[::-1], SCORES], axis=1)
    else:
        y_pred = SCORES[:, None]
    metrics = A.compile_metrics(units)
    assert [m.name for m in metrics] == ["accuracy", "sensitivity", "specificity", "precision",
                                         "auc"]
    for m in metrics:
        m.update_state(y_true[:6], y_pred[:6])
        m.update_state(y_true[6:], y_pred[6:])
        assert float(m.result()) == pytest.approx(EXPECTED[m.name], abs=1e-3), m.name


def test_encode_targets():
    assert A.encode_targets([0, 1], 2).tolist() == [[1, 0], [0, 1]]
    assert A.encode_targets([0, 1], 1).tolist() == [[0], [1]]
    with pytest.raises(ValueError, match="output_units"):
        A.encode_targets([0, 1], 3)
    with pytest.raises(ValueError, match="0 \\(NORMAL\\)"):
        A.encode_targets([0, 2], 2)


def _one_unit_model():
    """A stand-in for a 1-unit-head architecture such as pneumonet."""
    inputs = keras.Input((16, 16, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv_a")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(1, activation="sigmoid", name="output")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.slow
def test_one_unit_head_trains_and_reports_history(tmp_path):
    keras.utils.set_random_seed(0)
    model = _one_unit_model()
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=A.compile_metrics(1))
    assert A.last_conv_layer_name(model) == "conv_a"
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 1)).astype("float32")
    y = A.encode_targets([0, 1] * 4, 1)
    hist = model.fit(x, y, batch_size=4, epochs=1, validation_data=(x, y), verbose=0).history
    for key in ("accuracy", "sensitivity", "specificity", "precision", "auc"):
        assert key in hist and "val_" + key in hist


@pytest.mark.slow
def test_trained_model_saves_and_reloads_safely(tmp_path):
    keras.utils.set_random_seed(0)
    model = A.build("baseline", (24, 24, 1))
    x = np.random.default_rng(1).uniform(0, 255, (16, 24, 24, 1)).astype("float32")
    y = A.encode_targets([0, 1] * 8, 2)
    hist = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert set(hist) == {"loss", "accuracy", "sensitivity", "specificity", "precision", "auc"}
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(loaded(x[:4], training=False)),
                               keras.ops.convert_to_numpy(model(x[:4], training=False)),
                               rtol=1e-6)
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    after = loaded.evaluate(x, y, verbose=0, return_dict=True)
    assert after["sensitivity"] == pytest.approx(before["sensitivity"])
    assert after["auc"] == pytest.approx(before["auc"])


def test_import_enables_onednn_unless_the_user_chose():
    import os
    import subprocess
    import sys

    code = "import os, xray_core; print(os.environ['TF_ENABLE_ONEDNN_OPTS'])"
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "1"
    env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "0"
