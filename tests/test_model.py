"""The model object: one forward path, the pneumonia column, ensembles, calibration, threshold."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from xray_core import fileio, model as model_mod
from xray_core import runs


def _save_net(folder, name, units, seed):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 6, 1), name="image")
    x = keras.layers.Rescaling(1 / 255, name="rescale")(inputs)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dense(4, activation="relu", name="hidden")(x)
    outputs = keras.layers.Dense(units, activation="sigmoid", name="head")(x)
    net = keras.Model(inputs, outputs)
    net.save(folder / name)
    return net


def _x(n=150, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, 8, 6, 1)).astype(np.float32)


@pytest.mark.parametrize("units", [1, 2])
def test_single_network_reads_the_pneumonia_column_and_the_run_threshold(tmp_path, units):
    folder = tmp_path / f"head{units}"
    folder.mkdir()
    net = _save_net(folder, "model.keras", units, seed=units)
    fileio.atomic_write_json(folder / "config.json", {"image_size": [8, 6], "channels": 1})
    fileio.atomic_write_json(folder / "metrics.json", {"threshold": 0.3})
    m = model_mod.load_model(f"head{units}", root=tmp_path)
    assert m.input_size == (8, 6) and m.channels == 1 and m.output_units == units
    assert m.threshold == pytest.approx(0.3) and m.temperature == 1.0 and m.n_members == 1
    x = _x()
    expected = net.predict(x, verbose=0)[:, units - 1]  # column 1 of a 2-unit head is PNEUMONIA
    np.testing.assert_allclose(m.predict_proba(x, batch_size=64), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(m.predict(x), (m.predict_proba(x) >= 0.3).astype(int))
    assert m.predict_proba(x[:0]).shape == (0,)
    with pytest.raises(ValueError, match="shape"):
        m.predict_proba(np.zeros((2, 9, 6, 1), np.float32))
    # Decoded images of any size go through the one preprocessing path.
    img = np.random.default_rng(1).integers(0, 256, (30, 20), dtype=np.uint8)
    np.testing.assert_allclose(m.predict_proba([img]), m.predict_proba(m.preprocess(img)[None]), atol=1e-7)
    # The same folder as a str path, a Path or a Run gives the same model.
    assert model_mod.load_model(str(folder)).predict_proba(x[:3]) == pytest.approx(m.predict_proba(x[:3]))
    assert model_mod.load_model(runs.Run(folder)).run_id == f"head{units}"


def test_ensemble_averages_members_then_applies_the_temperature(tmp_path):
    folder = tmp_path / "ens"
    folder.mkdir()
    a = _save_net(folder, "model.keras", 1, seed=3)
    b = _save_net(folder, "member-1.keras", 2, seed=4)
    fileio.atomic_write_json(folder / "config.json", {"image_size": 8, "channels": 1})
    model_mod.write_spec(folder, members=["model.keras", "member-1.keras"], input_size=(8, 6), channels=1,
                         threshold=0.42, temperature=2.0)
    m = model_mod.load_model(folder)
    x = _x(20)
    pa, pb = a.predict(x, verbose=0)[:, 0], b.predict(x, verbose=0)[:, 1]
    mean = (pa + pb) / 2
    expected = 1 / (1 + np.exp(-(np.log(mean) - np.log1p(-mean)) / 2.0))
    np.testing.assert_allclose(m.predict_proba(x), expected, rtol=1e-5, atol=1e-6)
    scores = m.forward(x)
    np.testing.assert_array_equal(scores.proba, m.predict_proba(x))
    np.testing.assert_allclose(scores.member_proba, model_mod.calibrate(np.column_stack([pa, pb]), 2.0),
                               rtol=1e-5, atol=1e-6)
    assert m.threshold == 0.42 and m.n_members == 2
    assert scores.features.shape == (20, 4)  # the hidden layer, averaged over members
    assert [m.verdict(p) for p in (0.41, 0.42)] == ["NORMAL", "PNEUMONIA"]
    assert m.card["members"] == 2 and m.card["temperature"] == 2.0


def test_temperature_scaling_keeps_the_order_and_moves_towards_half():
    p = np.array([0.01, 0.2, 0.5, 0.7, 0.99])
    cooled = model_mod.calibrate(p, 2.0)
    assert np.all(np.diff(cooled) > 0)
    assert np.all(np.abs(cooled - 0.5) < np.abs(p - 0.5) + 1e-12)
    assert cooled[2] == pytest.approx(0.5)
    np.testing.assert_allclose(model_mod.calibrate(p, 1.0), p)


def test_a_run_without_a_network_says_so(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    fileio.atomic_write_json(folder / "config.json", {"image_size": 8})
    with pytest.raises(runs.RunNotFound, match="no model file"):
        model_mod.load_model(folder)
    with pytest.raises(ValueError, match="1 or 2 outputs"):
        model_mod.pneumonia_column(3)


def test_one_pass_gives_the_member_probabilities_and_the_gate_features(tmp_path):
    """Model.forward: each member's P(pneumonia) and the mean of the members' penultimate
    activations, checked against the weights computed by hand; then the calibrated mean."""
    folder = tmp_path / "ens"
    folder.mkdir()
    nets = [_save_net(folder, "model.keras", 1, seed=5), _save_net(folder, "member-1.keras", 2, seed=6)]
    model_mod.write_spec(folder, members=["model.keras", "member-1.keras"], input_size=(8, 6), channels=1,
                         threshold=0.5, temperature=0.7, bias=0.3)
    m = model_mod.load_model(folder)
    x = _x(70, seed=2)
    hidden, probs = [], []
    for net, col in zip(nets, (0, 1)):
        w1, b1 = net.get_layer("hidden").get_weights()
        w2, b2 = net.get_layer("head").get_weights()
        h = np.maximum((x.reshape(len(x), -1) / 255.0) @ w1 + b1, 0.0)
        hidden.append(h)
        probs.append(1 / (1 + np.exp(-(h @ w2 + b2)[:, col])))
    scores = m.forward(x, batch_size=32)  # three batches, one of 6
    raw, feats = scores.raw, scores.features
    assert raw.shape == (70, 2) and feats.shape == (70, 4)
    np.testing.assert_allclose(raw, np.column_stack(probs), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats, (hidden[0] + hidden[1]) / 2, rtol=1e-5, atol=1e-5)
    mean = (probs[0] + probs[1]) / 2
    by_hand = 1 / (1 + np.exp(-((np.log(mean) - np.log(1 - mean)) / 0.7 + 0.3)))
    np.testing.assert_allclose(scores.proba, by_hand, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores.uncalibrated, mean, rtol=1e-5, atol=1e-6)
    empty = m.forward(x[:0])
    assert empty.raw.shape == (0, 2) and empty.features.shape == (0, 0) and empty.proba.shape == (0,)
