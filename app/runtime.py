"""How the dashboard sits inside Streamlit's server process: one setting Streamlit has no option for.

After every script run (and every fragment run) Streamlit calls `keras.backend.clear_session()`
when Keras is imported (`streamlit.runtime.scriptrunner.script_runner._clean_problem_modules`).
For an app that builds a new Keras model on each run that frees memory. This app never does:
its models are loaded once into `st.cache_resource` and only read, and trainings run in their
own processes. For it, the call only costs: Keras' full `gc.collect()` and TensorFlow's kernel
cache cleared after each run, which put about 0.3-0.7 s between an upload and its verdict on a
2-core machine (benchmarks/verdict_latency.py) and made the next forward pass rebuild its kernels.

`keep_models_between_runs()` replaces that hook with one that keeps what Streamlit does for
matplotlib (close all figures) and leaves Keras alone. It refuses loudly, rather than silently
doing nothing, if a Streamlit release moves the hook (tests/test_app_runtime.py checks it).
"""

from __future__ import annotations

import sys

_HOOK = "_clean_problem_modules"
streamlit_hook = None  # Streamlit's own hook, kept when it is replaced (tests compare against it)


class StreamlitHookMissing(RuntimeError):
    """This Streamlit version has no `_clean_problem_modules` hook to replace."""


def _close_matplotlib_figures() -> None:
    """Streamlit's clean-up without the Keras part: figures of a finished run are closed."""
    plt = sys.modules.get("matplotlib.pyplot")
    if plt is not None:
        plt.close("all")


def keep_models_between_runs() -> None:
    """Stop Streamlit from clearing Keras' session after each run (idempotent)."""
    from streamlit.runtime.scriptrunner import script_runner

    if not hasattr(script_runner, _HOOK):
        raise StreamlitHookMissing(
            "streamlit.runtime.scriptrunner.script_runner has no _clean_problem_modules in this "
            "Streamlit version; check whether it still clears the Keras session after each run "
            "and update app/runtime.py.")
    global streamlit_hook
    current = getattr(script_runner, _HOOK)
    if current is not _close_matplotlib_figures:
        streamlit_hook = current
    setattr(script_runner, _HOOK, _close_matplotlib_figures)
