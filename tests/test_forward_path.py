"""One inference engine: only xray_core.model turns a film into P(pneumonia).

Lints over the source: no module other than xray_core/model.py calls a Keras network's
`predict`/`predict_on_batch`, or calls a network in inference mode, except Grad-CAM, which needs
the network's insides (named here with its reason); the mean-and-calibrate rule is applied in
model.py alone (and where calibration is fitted); the class names are defined once. A new
consumer that scores films goes through `case` (an assessment) or `Model.forward`.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Places that call a network directly, and why they may.
ALLOWED = {
    "xray_core/model.py": "the forward path itself",
    "xray_core/explain/gradcam.py": "Grad-CAM needs the last convolution's activations and their gradients",
}
# Single lines that match the pattern but call no network.
ALLOWED_LINES: dict[tuple[str, str], str] = {}
CALLS = re.compile(r"\.predict(_on_batch)?\(|\(\s*[\w\[\]:, +]*training\s*=\s*False\s*\)")


def _sources():
    for folder in ("xray_core", "pages", "app"):
        yield from sorted((ROOT / folder).rglob("*.py"))
    yield ROOT / "streamlit_app.py"


def test_no_second_forward_path():
    offenders = []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        if rel in ALLOWED:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if any(rel == f and snippet in code for f, snippet in ALLOWED_LINES):
                continue
            if CALLS.search(code):
                offenders.append(f"{rel}:{number}: {line.strip()}")
    assert not offenders, "score films through xray_core.model.Model.predict_proba instead:\n" + "\n".join(offenders)


def test_the_lint_sees_a_direct_call(tmp_path):
    """The pattern catches the calls it is meant to catch (so the test above can fail)."""
    for line in ("p = net.predict(x, verbose=0)", "out = model(batch, training=False)",
                 "y = keras_model.predict_on_batch(x)"):
        assert CALLS.search(line), line
    assert not CALLS.search("p = m.predict_proba(x)")


def test_calibration_is_applied_in_the_model_alone():
    """Model.forward is the one place the members' mean is calibrated; evaluation (which fits the
    calibration on the run's stress validation) and site (which refits it) apply candidate fits."""
    fitting = {"xray_core/model.py", "xray_core/evaluation.py", "xray_core/site.py"}
    rule = re.compile(r"\bcalibrate\(")
    holders = [p.relative_to(ROOT).as_posix() for p in _sources()
               if rule.search(p.read_text(encoding="utf-8")) and p.relative_to(ROOT).as_posix() not in fitting]
    assert holders == [], holders


def test_the_class_names_are_defined_once():
    rule = re.compile(r"^CLASSES\s*=", re.M)
    holders = [p.relative_to(ROOT).as_posix() for p in _sources() if rule.search(p.read_text(encoding="utf-8"))]
    assert holders == ["xray_core/model.py"], holders


def test_the_pneumonia_column_rule_lives_in_one_place():
    rule = re.compile(r"1 if .*output_units.* == 2 else 0|1 if .*units.* >= 2 else 0")
    holders = [p.relative_to(ROOT).as_posix() for p in _sources() if rule.search(p.read_text(encoding="utf-8"))]
    assert holders == ["xray_core/model.py"], holders
