"""No page runs unless the entry script (`streamlit_app.py`) ran first, on the same script run.

The entry script is where sign-in, viewer mode and the sidebar's folders are checked. Streamlit
does not always run it: while no session of a freshly started server has called `st.navigation`,
Streamlit treats an app with a `pages/` folder as an old-style multipage app and runs the page
a URL names (`/train`) directly, with an automatic list of the folder in the sidebar. Whoever
opened a page's address first after a (re)start skipped sign-in and viewer mode.

So the entry script calls `entry_ran()` just before it runs the chosen page, and every page calls
`require_entry()` first. A page reached without the entry runs the entry script in its place, in
the same script run (the request's widget values and the address asked for are kept); the entry
then signs in, applies viewer mode and the settings, and runs the page asked for if it may, or the
sign-in page or the default page otherwise. Its `st.navigation` also ends Streamlit's pages-folder
mode for the whole server. The page's own run stops there. (Streamlit's option for the automatic
list, `client.showSidebarNavigation = false`, would hide the app's own sidebar navigation too; the
list is replaced by the entry's navigation within that first run instead.)

`refuse_in_viewer_mode` is the second lock: a page that writes refuses in viewer mode by itself,
reading the server's setting, whatever the navigation offered.
"""

from __future__ import annotations

import contextvars
import types
from pathlib import Path

import streamlit as st

from xray_core import settings

ENTRY_SCRIPT = Path(__file__).resolve().parents[1] / "streamlit_app.py"
ENTRY_MARK = "_xray_entry_ran"  # set by the entry script, taken by the page's guard on the same run
# The guard is running the entry script on this thread's script run. Not in st.session_state: a
# stopping script run (st.stop) refuses further session-state changes, so it could not be reset.
_running_entry: contextvars.ContextVar[bool] = contextvars.ContextVar("xray_running_entry", default=False)


def entry_ran() -> None:
    """Called by the entry script right before `page.run()`: the page may run on this run."""
    st.session_state[ENTRY_MARK] = True


def require_entry() -> None:
    """The first statement of every page: return if the entry script ran first on this run;
    otherwise run the entry script in the page's place and stop the page."""
    if st.session_state.pop(ENTRY_MARK, False):
        return
    if _running_entry.get():
        # The entry script ran the page without marking it: refuse rather than loop.
        st.error("This page cannot be opened on its own. Open the dashboard's main address.")
        st.stop()
    token = _running_entry.set(True)
    try:
        _run_entry_script()
    finally:
        _running_entry.reset(token)
    st.stop()  # the entry script has run the page (or the sign-in page, or refused it)


def _run_entry_script() -> None:
    """Execute streamlit_app.py as Streamlit runs a script: in a fresh `__main__` module."""
    code = compile(ENTRY_SCRIPT.read_text(encoding="utf-8"), str(ENTRY_SCRIPT), "exec")
    module = types.ModuleType("__main__")
    module.__dict__["__file__"] = str(ENTRY_SCRIPT)
    exec(code, module.__dict__)  # noqa: S102 - the project's own entry script


def refuse_in_viewer_mode(sentence: str) -> None:
    """Show `sentence` and stop the page if the server is in viewer mode (or its mode cannot be
    read): read from the server's settings, not from the session or the navigation."""
    try:
        viewer = settings.viewer_mode()
    except settings.SettingsError as exc:
        st.error(f"The server's settings cannot be used: {exc}")
        st.stop()
    if viewer:
        st.info(sentence)
        st.stop()
