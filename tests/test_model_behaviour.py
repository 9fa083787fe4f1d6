"""The model object against networks whose outputs are known by hand.

Two tiny networks with set weights: the mean pixel a = mean(x) / 255 goes to a 2-unit hidden layer
and a sigmoid head, so each member's P(pneumonia) and penultimate features are simple functions of
a, computed here with math.exp (not with xray_core). Member A has a 1-unit head, member B the seed's
2-unit head (column 1 is PNEUMONIA).
"""

from __future__ import annotations

import json
import math
import os
import re

import keras
import numpy as np
import pytest

from xray_core import model as model_mod
from xray_core import runs

H, W = 4, 5
LEVELS = np.array([0.0, 51.0, 127.5, 255.0])  # a = 0, 0.2, 0.5, 1
A = LEVELS / 255


def sig(z):
    return 1 / (1 + np.exp(-np.asarray(z, float)))


P_A = sig(2 * A - 1)  # member A: hidden (a, 2a + 1), head sigmoid(2 * h0 - 1)
P_B = sig(3 * A)  # member B: hidden (3a, 0), head columns (sigmoid(-h0), sigmoid(h0))
FEATURES = np.stack([(A + 3 * A) / 2, (2 * A + 1 + 0) / 2], axis=1)  # the members' hidden layers, averaged


def _net(units, hidden_w, hidden_b, head_w, head_b, dropout=0.0):
    inputs = keras.Input((H, W, 1), name="image")
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    hidden = keras.layers.Dense(2, name="hidden")
    x = hidden(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="dropout")(x)  # active only when training
    head = keras.layers.Dense(units, activation="sigmoid", name="head")
    outputs = head(x)
    net = keras.Model(inputs, outputs)
    hidden.set_weights([np.array(hidden_w, np.float32), np.array(hidden_b, np.float32)])
    head.set_weights([np.array(head_w, np.float32), np.array(head_b, np.float32)])
    return net


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """A folder holding member A as model.keras and member B as member-1.keras (nothing else)."""
    folder = tmp_path_factory.mktemp("nets")
    _net(1, [[1, 2]], [0, 1], [[2], [0]], [-1]).save(folder / "model.keras")
    _net(2, [[3, 0]], [0, 0], [[-1, 1], [0, 0]], [0, 0]).save(folder / "member-1.keras")
    _net(1, [[1, 2]], [0, 1], [[2], [0]], [-1], dropout=0.9).save(folder / "dropout.keras")  # A with dropout
    return folder


def run_folder(tmp_path, nets, name="run", *, files=("model.keras",), spec=None, config=None, metrics=None):
    folder = tmp_path / name
    folder.mkdir()
    for f in files:
        (folder / f).write_bytes((nets / f).read_bytes())
    for fname, content in (("model.json", spec), ("config.json", config), ("metrics.json", metrics)):
        if content is not None:
            (folder / fname).write_text(json.dumps(content))
    return folder


def batch(levels=LEVELS):
    return np.stack([np.full((H, W, 1), v, np.float32) for v in levels])


# ----------------------------------------------------------------------------- the arithmetic


def test_pneumonia_column_and_its_refusal():
    assert model_mod.pneumonia_column(1) == 0
    assert model_mod.pneumonia_column(2) == 1
    for bad in (0, 3):
        with pytest.raises(model_mod.ModelError, match=f"1 or 2 outputs; got {bad}"):
            model_mod.pneumonia_column(bad)


def test_logit_and_sigmoid_by_hand():
    np.testing.assert_allclose(model_mod.logit([0.5, 0.8, 0.2]), [0.0, math.log(4), -math.log(4)], atol=1e-12)
    np.testing.assert_allclose(model_mod.sigmoid([0.0, math.log(4), -math.log(4)]), [0.5, 0.8, 0.2], atol=1e-12)
    # Clipped at 1e-7 from 0 and 1, so certain scores stay finite.
    edge = math.log((1 - 1e-7) / 1e-7)
    np.testing.assert_allclose(model_mod.logit([0.0, 1.0]), [-edge, edge], rtol=1e-9)
    assert model_mod.logit(np.float32(0.8)).dtype == np.float64
    assert model_mod.sigmoid(np.float32(0)).dtype == np.float64


def test_calibrate_by_hand():
    p = np.array([0.2, 0.5, 0.8])
    same = model_mod.calibrate(p.tolist(), 1.0)
    assert isinstance(same, np.ndarray) and same.dtype == np.float64
    np.testing.assert_array_equal(same, p)
    # No calibration leaves even certain scores alone (no clipping at 1e-7) and returns float64.
    np.testing.assert_array_equal(model_mod.calibrate([0.0, 1.0], 1.0), [0.0, 1.0])
    assert model_mod.calibrate(np.array([0.3], np.float32), 1.0).dtype == np.float64
    # Temperature 2: sigmoid(log(4) / 2) = sigmoid(log 2) = 2/3.
    np.testing.assert_allclose(model_mod.calibrate(p, 2.0), [1 / 3, 0.5, 2 / 3], atol=1e-12)
    # A bias alone moves every score: sigmoid(0 + log 3) = 3/4, sigmoid(log 4 + log 3) = 12/13.
    np.testing.assert_allclose(model_mod.calibrate([0.5, 0.8], 1.0, math.log(3)), [0.75, 12 / 13], atol=1e-12)
    # Both: sigmoid(log(4) / 2 - log 2) = 1/2.
    assert model_mod.calibrate([0.8], 2.0, -math.log(2))[0] == pytest.approx(0.5)


# ----------------------------------------------------------------------------- what the run says


def test_an_ensemble_averages_members_then_calibrates(tmp_path, nets):
    folder = run_folder(tmp_path, nets, files=("model.keras", "member-1.keras"), spec={
        "members": ["model.keras", "member-1.keras"], "input_size": [H, W], "channels": 1, "threshold": 0.4,
        "temperature": 2.0, "bias": 0.5})
    m = model_mod.Model(folder)
    assert m.n_members == 2 and m.run_id == "run" and m.path == folder
    x = batch()
    raw = m.forward(x).raw
    assert raw.shape == (4, 2) and raw.dtype == np.float64
    np.testing.assert_allclose(raw, np.stack([P_A, P_B], axis=1), atol=1e-6)
    np.testing.assert_allclose(m.forward(x, batch_size=3).raw, raw, atol=1e-7)  # batches of 3 then 1

    def platt(p):
        return sig((np.log(p) - np.log1p(-p)) / 2.0 + 0.5)

    np.testing.assert_allclose(m.forward(x).member_proba, platt(np.stack([P_A, P_B], axis=1)), atol=1e-6)
    expected = platt((P_A + P_B) / 2)  # mean of the members, then calibration (not the other way round)
    np.testing.assert_allclose(m.predict_proba(x), expected, atol=1e-6)
    np.testing.assert_array_equal(m.predict(x), (expected >= 0.4).astype(int))
    assert m.predict(x).dtype.kind == "i"
    np.testing.assert_allclose(m.predict_proba(x.astype(np.float64)), expected, atol=1e-6)  # any float dtype
    assert m.predict(x).tolist() == [1, 1, 1, 1] and expected[0] == pytest.approx(0.5658, abs=1e-4)
    np.testing.assert_allclose(m.forward(x).features, FEATURES, atol=1e-6)
    np.testing.assert_allclose(m.forward(x, batch_size=1).features, FEATURES, atol=1e-6)
    assert m.forward(x).features.dtype == np.float32
    # One forward pass gives everything, in any batch size.
    scores = m.forward(x, batch_size=3)
    assert scores.raw.dtype == np.float64 and scores.features.dtype == np.float32
    np.testing.assert_allclose(scores.raw, raw, atol=1e-7)
    np.testing.assert_allclose(scores.proba, expected, atol=1e-6)
    none = m.forward(x[:0])
    assert none.raw.shape == (0, 2) and none.features.shape[0] == 0 and none.features.dtype == np.float32
    # A network's own outputs, as training-time evaluation reads them: the first member's (one column).
    np.testing.assert_allclose(model_mod.network_outputs(m.members[0], x, batch_size=3), P_A[:, None], atol=1e-6)


def test_the_threshold_is_inclusive(tmp_path, nets):
    folder = run_folder(tmp_path, nets, spec={"input_size": [H, W], "channels": 1, "threshold": 0.5})
    p = model_mod.Model(folder).predict_proba(batch())
    spec = {"input_size": [H, W], "channels": 1, "threshold": float(p[2])}  # exactly the third film's score
    (folder / "model.json").write_text(json.dumps(spec))
    at = model_mod.Model(folder)
    assert at.threshold == p[2]
    assert at.predict(batch()).tolist() == [0, 0, 1, 1]
    spec["threshold"] = float(np.nextafter(p[2], 1.0))
    (folder / "model.json").write_text(json.dumps(spec))
    assert model_mod.Model(folder).predict(batch()).tolist() == [0, 0, 0, 1]


def test_a_two_unit_head_reads_column_one(tmp_path, nets):
    folder = run_folder(tmp_path, nets, files=("member-1.keras",), spec={"members": ["member-1.keras"]})
    m = model_mod.Model(folder)
    assert m.output_units == 2
    np.testing.assert_allclose(m.predict_proba(batch()), P_B, atol=1e-6)
    np.testing.assert_allclose(model_mod.network_outputs(m.members[0], batch()),
                               np.stack([sig(-3 * A), P_B], axis=1), atol=1e-6)
    assert model_mod.network_outputs(m.members[0], batch()[:0]).shape == (0, 2)
    assert m.forward(batch()[:0]).raw.shape == (0, 1)


def test_settings_fall_back_from_model_json_to_the_run_files_to_the_network(tmp_path, nets):
    bare = model_mod.Model(run_folder(tmp_path, nets, "bare"))
    assert (bare.input_size, bare.channels) == ((H, W), 1)  # read off the network
    assert (bare.threshold, bare.threshold_policy, bare.temperature, bare.bias) == (0.5, "sensitivity", 1.0, 0.0)
    assert bare.config == {} and bare.metrics == {}
    square = model_mod.Model(run_folder(tmp_path, nets, "square", config={"image_size": 7, "channels": 3},
                                       metrics={"threshold": 0.3, "threshold_method": "youden"}))
    assert (square.input_size, square.channels) == ((7, 7), 3)
    assert (square.threshold, square.threshold_policy) == (0.3, "youden")
    listed = model_mod.Model(run_folder(tmp_path, nets, "listed", config={"image_size": [6, 9]}))
    assert listed.input_size == (6, 9)
    # model.json wins over the run files, and a threshold of 0 is a threshold (not "missing").
    spec = {"input_size": [H, W], "channels": 1, "threshold": 0.0, "threshold_policy": "youden",
            "temperature": 1.5, "bias": -0.25}
    both = model_mod.Model(run_folder(tmp_path, nets, "both", spec=spec, config={"image_size": 7, "channels": 3},
                                      metrics={"threshold": 0.3, "threshold_method": "sensitivity"}))
    assert (both.input_size, both.channels, both.threshold) == ((H, W), 1, 0.0)
    assert (both.threshold_policy, both.temperature, both.bias) == ("youden", 1.5, -0.25)
    # A spec given to the constructor replaces model.json (temperature 1: scoring uncalibrated).
    plain = model_mod.Model(both.path, spec={"input_size": [H, W], "channels": 1})
    assert (plain.temperature, plain.bias, plain.threshold) == (1.0, 0.0, 0.3)
    # Run files that are not JSON objects count as absent.
    odd = run_folder(tmp_path, nets, "odd", config=[1, 2], metrics=["x"])
    assert model_mod.Model(odd).config == {} and model_mod.Model(odd).metrics == {}


def test_card_and_repr_say_what_the_model_is(tmp_path, nets):
    folder = run_folder(tmp_path, nets, "carded", files=("model.keras", "member-1.keras"), spec={
        "members": ["model.keras", "member-1.keras"], "input_size": [H, W], "channels": 1, "threshold": 0.25,
        "threshold_policy": "youden", "temperature": 2.0, "bias": 0.125},
        config={"arch": "tiny"}, metrics={"validation": {"roc_auc": 0.9}, "validation_ci95": {"low": 0.8},
                                          "stress": {"roc_auc": 0.7}, "calibration": {"ece": 0.05}})
    m = model_mod.Model(folder)
    assert m.card == {
        "run_id": "carded", "arch": "tiny", "members": 2, "input_size": [H, W], "channels": 1, "threshold": 0.25,
        "threshold_policy": "youden", "temperature": 2.0, "bias": 0.125, "arithmetic": "float32", "parent": None,
        "validation": {"roc_auc": 0.9},
        "validation_ci95": {"low": 0.8}, "stress": {"roc_auc": 0.7}, "calibration": {"ece": 0.05},
    }
    assert repr(m) == ("Model('carded', members=2, input=(4, 5)x1, threshold=0.2500, temperature=2.000, "
                       "bias=0.125)")


def test_every_forward_path_runs_the_network_in_inference_mode(tmp_path, nets):
    # Member A with 90 % dropout after its hidden layer: any path that ran it in training mode would
    # drop most features at random.
    folder = run_folder(tmp_path, nets, files=("dropout.keras",), spec={"members": ["dropout.keras"]})
    m = model_mod.Model(folder)
    x = batch()
    for _ in range(2):
        np.testing.assert_allclose(m.predict_proba(x), P_A, atol=1e-6)
        np.testing.assert_allclose(model_mod.network_outputs(m.members[0], x), P_A[:, None], atol=1e-6)
        np.testing.assert_allclose(m.forward(x).features, np.stack([A, 2 * A + 1], axis=1), atol=1e-6)


# ----------------------------------------------------------------------------- inputs


def test_inputs_the_model_takes_and_refuses(tmp_path, nets):
    m = model_mod.Model(run_folder(tmp_path, nets, spec={"input_size": [H, W], "channels": 1}))
    one = batch()[1]
    np.testing.assert_allclose(m.predict_proba(one), P_A[1:2], atol=1e-6)  # a single (h, w, c) image
    # Decoded gray images of any size, as a list: resized to the model's input by preprocess.
    decoded = [np.full((40, 30), 51, np.uint8), np.full((9, 9), 255, np.uint8)]
    prepared = m.prepare_batch(decoded)
    assert prepared.shape == (2, H, W, 1) and prepared.dtype == np.float32
    np.testing.assert_allclose(prepared[..., 0], [np.full((H, W), 51.0), np.full((H, W), 255.0)], atol=1e-3)
    np.testing.assert_allclose(m.predict_proba(decoded), P_A[[1, 3]], atol=1e-5)
    np.testing.assert_allclose(m.predict_proba(tuple(decoded)), P_A[[1, 3]], atol=1e-5)
    assert m.prepare_batch([]).shape == (0, H, W, 1) and m.prepare_batch([]).dtype == np.float32
    rgb_model = model_mod.Model(m.path, spec={"input_size": [H, W], "channels": 3})
    three = rgb_model.preprocess(decoded[0])
    assert three.shape == (H, W, 3) and np.array_equal(three[..., 0], three[..., 2])
    assert m.preprocess(decoded[0]).shape == (H, W, 1)
    for bad in (np.zeros((2, H, W)), np.zeros((2, W, H, 1)), np.zeros((H, W)), np.zeros((2, H, W, 3))):
        with pytest.raises(model_mod.ModelError, match=rf"takes prepared images of shape \(N, {H}, {W}, 1\).*"
                                                        rf"got an array of shape {re.escape(str(bad.shape))}"):
            m.predict_proba(bad)


def test_a_missing_member_is_named(tmp_path, nets):
    folder = run_folder(tmp_path, nets, "half", spec={"members": ["model.keras", "member-8.keras", "member-9.keras"]})
    with pytest.raises(runs.RunNotFound, match=r"^The run 'half' has no model file member-8\.keras, member-9\.keras in "
                                               r".*half\. It may still be training, or it failed before saving; check "
                                               r"`python -m xray_core runs`\.$"):
        model_mod.Model(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(runs.RunNotFound, match="no model file model.keras"):
        model_mod.Model(empty)


def test_networks_load_once(tmp_path, nets):
    m = model_mod.Model(run_folder(tmp_path, nets, spec={"input_size": [H, W], "channels": 1}))
    first = m.members
    assert len(first) == 1 and m.members is first


# ----------------------------------------------------------------------------- loading and writing


def test_load_model_caches_per_folder_until_the_model_changes(tmp_path, nets):
    folder = run_folder(tmp_path, nets, "cached", spec={"input_size": [H, W], "channels": 1, "threshold": 0.1})
    m = model_mod.load_model(folder)
    assert model_mod.load_model(str(folder)) is m
    assert model_mod.load_model("cached", root=tmp_path) is m
    assert model_mod.load_model(runs.Run(folder)) is m
    assert model_mod.load_model(m) is m
    fresh = model_mod.load_model(folder, cache=False)
    assert fresh is not m and fresh.threshold == 0.1
    # Rewritten model.json (a recalibrated or retrained run): a new Model with the new settings.
    model_mod.write_spec(folder, members=["model.keras"], input_size=(H, W), channels=1, threshold=0.7)
    stamp = os.stat(folder / "model.json").st_mtime + 5
    os.utime(folder / "model.json", (stamp, stamp))
    again = model_mod.load_model(folder)
    assert again is not m and again.threshold == 0.7
    assert model_mod.load_model(folder) is again
    # A retrained network without a model.json is noticed too.
    bare = run_folder(tmp_path, nets, "bare-cached")
    first = model_mod.load_model(bare)
    stamp = os.stat(bare / "model.keras").st_mtime + 5
    os.utime(bare / "model.keras", (stamp, stamp))
    assert model_mod.load_model(bare) is not first
    with pytest.raises(runs.RunNotFound):
        model_mod.load_model("no-such-run", root=tmp_path)
    # Two folders whose files carry the same time are two models.
    twin = run_folder(tmp_path, nets, "twin")
    os.utime(twin / "model.keras", (stamp, stamp))
    assert model_mod.load_model(twin) is not model_mod.load_model(bare)
    assert model_mod.load_model(twin).path == twin


def test_write_spec_writes_what_load_model_reads(tmp_path):
    path = model_mod.write_spec(tmp_path, members=("model.keras", "member-1.keras"), input_size=(np.int64(6), 9.0),
                                channels=np.int32(3), threshold=np.float32(0.25), temperature=2, bias=-1,
                                threshold_policy="youden", extra={"note": "x", "bias": -0.5})
    assert path == tmp_path / "model.json"
    text = path.read_text()
    assert json.loads(text) == {"members": ["model.keras", "member-1.keras"], "input_size": [6, 9], "channels": 3,
                                "threshold": 0.25, "temperature": 2.0, "bias": -0.5, "threshold_policy": "youden",
                                "note": "x"}
    default = json.loads(model_mod.write_spec(tmp_path, members=["m.keras"], input_size=(2, 2), channels=1,
                                              threshold=0.5).read_text())
    assert (default["temperature"], default["bias"], default["threshold_policy"]) == (1.0, 0.0, "sensitivity")
    assert type(default["temperature"]) is float and type(default["channels"]) is int
