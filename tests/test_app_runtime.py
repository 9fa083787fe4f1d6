"""The dashboard keeps its Keras models warm between Streamlit runs (app/runtime.py)."""

from __future__ import annotations

import keras
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
from streamlit.runtime.scriptrunner import script_runner  # noqa: E402

from app import runtime  # noqa: E402


@pytest.fixture
def restored_hook(monkeypatch):
    """Streamlit's own hook (also when an earlier test's app run already replaced it), put back
    after the test whatever the test changes."""
    original = runtime.streamlit_hook or script_runner._clean_problem_modules
    assert original is not runtime._close_matplotlib_figures
    monkeypatch.setattr(script_runner, "_clean_problem_modules", original)
    return original


def _names_across(hook) -> tuple[str, str]:
    keras.backend.clear_session()
    first = keras.layers.Dense(1).name
    hook()
    return first, keras.layers.Dense(1).name


def test_streamlit_hook_clears_keras_and_ours_does_not(restored_hook):
    # Streamlit's hook resets Keras' global state (layer names start again): the cost we remove.
    first, second = _names_across(restored_hook)
    assert second == first
    runtime.keep_models_between_runs()
    assert script_runner._clean_problem_modules is not restored_hook
    first, second = _names_across(script_runner._clean_problem_modules)
    assert second != first  # Keras' state survived the end of a run


def test_matplotlib_figures_still_closed(restored_hook):
    runtime.keep_models_between_runs()
    plt.figure()
    assert plt.get_fignums()
    script_runner._clean_problem_modules()
    assert plt.get_fignums() == []


def test_missing_hook_is_refused(restored_hook, monkeypatch):
    monkeypatch.delattr(script_runner, "_clean_problem_modules")
    with pytest.raises(runtime.StreamlitHookMissing, match="_clean_problem_modules"):
        runtime.keep_models_between_runs()


def test_the_app_installs_it(restored_hook, monkeypatch, tmp_path):
    from tests.apptest_helpers import open_page

    open_page(monkeypatch, tmp_path / "no-data", tmp_path / "no-models")
    assert script_runner._clean_problem_modules is runtime._close_matplotlib_figures
