"""The dashboard's entry point: page config, the shared sidebar, and the router over pages/.

Run with `streamlit run streamlit_app.py`. Nothing here imports TensorFlow, so the app opens
fast; a page imports it only when it needs a model.
"""

from __future__ import annotations

import os

import streamlit as st

st.set_page_config(
    page_title="Chest X-ray pneumonia",
    page_icon=":material/radiology:",
    layout="wide",
)

# Shared settings, read by every page from st.session_state. Set once per session from the
# environment so a deployment (or a test) can point the app at its folders.
if "data_dir" not in st.session_state:
    st.session_state["data_dir"] = os.environ.get("XRAY_DATA_DIR") or "data/chest_xray"
if "models_dir" not in st.session_state:
    st.session_state["models_dir"] = os.environ.get("XRAY_MODELS_DIR") or "trained_models"

# Diagnose comes first and is the default: it is what a clinician opens the app for, and it
# works on a fresh machine with no dataset (the bundled default model serves it).
pages = [
    st.Page("pages/diagnose.py", title="Diagnose", icon=":material/stethoscope:", default=True),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/photo_library:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
]
page = st.navigation(pages)



def _keep(name: str) -> None:
    """Copy a sidebar input into its plain session key, which survives page switches (widget
    keys of the entry script can be dropped when the page changes)."""
    st.session_state[name] = st.session_state[f"_{name}_input"]


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
    st.caption("Research software, not a medical device: not for clinical decisions.")

page.run()
