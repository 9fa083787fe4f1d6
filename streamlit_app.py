"""The dashboard's entry point: page config, the shared sidebar, and the router over pages/.

Run with `streamlit run streamlit_app.py`. The server process never imports TensorFlow, Keras or
lime: verdicts run on LiteRT, and explanations in worker processes (`xray_core.serving.service`).
"""

from __future__ import annotations

import os

import streamlit as st
from streamlit.errors import StreamlitSecretNotFoundError

from app.entry import entry_ran
from xray_core import fileio, settings

st.set_page_config(
    page_title="Chest X-ray pneumonia",
    page_icon=":material/radiology:",
    layout="wide",
)

try:
    viewer = settings.viewer_mode()
except settings.SettingsError as exc:
    st.error(f"The server's settings cannot be used: {exc}")
    st.stop()
st.session_state["viewer_mode"] = viewer  # pages hide what writes when True


def _auth_configured() -> bool:
    """Whether .streamlit/secrets.toml holds an [auth] table (no secrets file at all: no)."""
    try:
        return "auth" in st.secrets
    except StreamlitSecretNotFoundError:
        return False


def _auth_provider() -> str | None:
    """The provider to pass st.login: a named [auth.NAME] table if there is one, else [auth] itself."""
    named = [k for k, v in st.secrets["auth"].items() if hasattr(v, "keys")]
    return named[0] if named else None


def _sign_in() -> None:
    st.title("Chest X-ray pneumonia")
    st.info("Sign in with your institution's account to open the dashboard.")
    if st.button("Sign in", key="auth_sign_in", type="primary"):
        st.login(_auth_provider())  # None: the provider configured in [auth] itself
    st.caption("Research software, not a medical device: not for clinical decisions.")


# Sign-in (OpenID Connect through st.login) when the administrator configured [auth] in
# .streamlit/secrets.toml: a signed-out visitor gets a navigation holding only the sign-in page,
# so no page of the app runs before it. A page's address opened on a fresh server reaches this
# script too: each page's first statement, app.entry.require_entry(), runs it when Streamlit ran
# the page without it.
if _auth_configured():
    if not st.user.get("is_logged_in", False):
        st.navigation([st.Page(_sign_in, title="Sign in", default=True)], position="hidden").run()
        st.stop()
    with st.sidebar:
        who = st.user.get("name") or st.user.get("email") or "an unnamed account"
        email = st.user.get("email")
        st.markdown(f"Signed in as **{who}**" + (f"  \n{email}" if email and email != who else ""))
        st.button("Sign out", key="auth_sign_out", on_click=st.logout)

# Shared settings, read by every page from st.session_state. Set once per session from the
# environment so a deployment (or a test) can point the app at its folders.
if "data_dir" not in st.session_state:
    st.session_state["data_dir"] = os.environ.get("XRAY_DATA_DIR") or "data/chest_xray"
if "models_dir" not in st.session_state:
    st.session_state["models_dir"] = os.environ.get("XRAY_MODELS_DIR") or "trained_models"

# Diagnose comes first and is the default: it is what a clinician opens the app for, and it
# works on a fresh machine with no dataset (the bundled default model serves it). In viewer
# mode, Train and Worklist (which write runs and score tables) are not offered at all.
pages = [
    st.Page("pages/diagnose.py", title="Diagnose", icon=":material/stethoscope:", default=True),
    *([] if viewer else [st.Page("pages/worklist.py", title="Worklist",
                                 icon=":material/format_list_numbered:")]),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    *([] if viewer else [st.Page("pages/train.py", title="Train", icon=":material/model_training:")]),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/validate.py", title="Validate", icon=":material/fact_check:"),
]
page = st.navigation(pages)

FOLDER_WORDS = {"data_dir": "dataset folder", "models_dir": "models folder"}


def _keep(name: str) -> None:
    """Copy a sidebar input into its plain session key, which survives page switches (widget
    keys of the entry script can be dropped when the page changes), if it lies under an allowed
    root; otherwise keep the previous folder and say why."""
    typed = st.session_state[f"_{name}_input"]
    try:
        fileio.check_allowed(typed, what=FOLDER_WORDS[name])
    except fileio.PathNotAllowed as exc:
        st.session_state[f"_{name}_refused"] = str(exc)
        return
    st.session_state.pop(f"_{name}_refused", None)
    st.session_state[name] = typed


with st.sidebar:
    for name, label, help_text in (
        ("data_dir", "Dataset folder",
         "A folder in the Kermany layout: train/ (and optionally val/, test/), each with "
         "NORMAL/ and PNEUMONIA/ inside."),
        ("models_dir", "Models folder",
         "Where training runs are stored, one folder per run; default/ is the bundled model."),
    ):
        st.session_state[f"_{name}_input"] = st.session_state[name]
        st.text_input(label, key=f"_{name}_input", help=help_text, on_change=_keep, args=(name,))
        if f"_{name}_refused" in st.session_state:
            st.error(st.session_state[f"_{name}_refused"])
    if viewer:
        st.caption("Viewer mode: training, downloads and other writes are switched off on this server.")
    st.caption("Research software, not a medical device: not for clinical decisions.")

entry_ran()  # the page's require_entry() lets it run on this run
page.run()
