"""Dataset: what is in the folder, a browsable sample, and how to get the data when it is missing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from app import common, dataset_view
from app.entry import require_entry
from xray_core import data, download, fileio, imaging

require_entry()  # first: no page runs unless streamlit_app.py ran first (app/entry.py)

PER_PAGE = 12


@st.cache_data(show_spinner="Indexing the dataset…")
def load_index(root: str, stamp: float) -> pd.DataFrame:
    """The dataset's index; `stamp` (the folders' mtimes) invalidates it when files change."""
    return data.index_dataset(root)


@st.cache_data(show_spinner="Reading image headers…")
def load_stats(root: str, stamp: float) -> dict:
    return data.dataset_stats(load_index(root, stamp))


@st.cache_data(max_entries=512, show_spinner=False)
def load_thumbnail(path: str, max_side: int) -> tuple:
    """(thumbnail, full size) of one dataset file, or (None, reason) when it cannot be read."""
    try:
        img = imaging.decode(path)
    except imaging.ImageDecodeError as exc:
        return None, str(exc)
    return dataset_view.thumbnail(img, max_side), img.shape


def folder_stamp(root: Path) -> float:
    """Latest mtime of the split and class folders: changes when files are added or removed."""
    stamps = [root.stat().st_mtime]
    for split in root.iterdir():
        if split.is_dir():
            stamps.append(split.stat().st_mtime)
            stamps += [c.stat().st_mtime for c in split.iterdir() if c.is_dir()]
    return max(stamps)


def show_missing(folder: Path, reason: str) -> None:
    """No dataset: say what the folder must look like, where the data comes from, offer a download."""
    st.warning(reason)
    st.markdown(
        "The dashboard expects the pediatric chest X-ray collection of Kermany et al. (2018) in "
        "this layout (`val/` and `test/` are optional; class folder names in any case):"
    )
    st.code(
        "chest_xray/\n"
        "  train/\n    NORMAL/     IM-0115-0001.jpeg, NORMAL2-IM-1427-0001.jpeg, …\n"
        "    PNEUMONIA/  person1946_bacteria_4874.jpeg, person1_virus_6.jpeg, …\n"
        "  val/    (NORMAL/, PNEUMONIA/)\n"
        "  test/   (NORMAL/, PNEUMONIA/)",
        language=None,
    )
    st.markdown(
        "The data: Kermany, Zhang, Goldbaum (2018), *Large Dataset of Labeled Optical Coherence "
        "Tomography (OCT) and Chest X-Ray Images*, Mendeley Data V3, "
        "[doi:10.17632/rscbjbr9sj.3](https://doi.org/10.17632/rscbjbr9sj.3), CC BY 4.0 "
        "(about 1.2 GB). Download it here, or with `python -m xray_core download`, or point "
        "the sidebar's *Dataset folder* at a copy you already have."
    )
    show_download(folder)


def show_download(folder: Path) -> None:
    if st.session_state.get("viewer_mode"):
        st.info("Downloads are switched off on this server (viewer mode). Ask the administrator "
                "to fetch the data with `python -m xray_core download`.")
        return
    sources = list(download.SOURCES)
    dest = folder.parent if folder.name.lower() == "chest_xray" else folder
    cols = st.columns([1, 2])
    source = cols[0].selectbox("Source", sources, key="dataset_source")
    cols[1].text_input("Download into", value=str(dest), key="dataset_download_dest")
    cols = st.columns([2, 1])
    url = cols[0].text_input("Mirror URL (optional)", key="dataset_download_url",
                             help="Your institution's copy of the same file, instead of the published "
                                  "address. Only the catalogue's hosts and those the administrator "
                                  "allowed are accepted.")
    sha256 = cols[1].text_input("Mirror's SHA-256 (optional)", key="dataset_download_sha256",
                                help="Checksum of the mirror's file, if it differs from the published one.")
    if st.button("Download the dataset", key="dataset_download", type="primary"):
        bar = st.progress(0.0, text="Connecting…")

        def progress(report: download.DownloadProgress) -> None:
            """One line per report: phase, bytes of total, rate, time left (the library's words)."""
            bar.progress(report.fraction or 0.0, text=report.describe())

        try:
            where = download.download(source, dest=fileio.check_allowed(
                                          st.session_state["dataset_download_dest"], what="download folder"),
                                      url=url.strip() or None, expected_sha256=sha256.strip() or None,
                                      progress=progress, url_policy=download.app_url_policy())
        except (ValueError, OSError) as exc:  # DownloadError, UrlNotAllowed, PathNotAllowed: sentences
            st.error(f"The download did not complete: {exc}")
            return
        bar.progress(1.0, text="Done.")
        st.success(f"The dataset is in {where}. Set the sidebar's Dataset folder to it if it differs.")
        st.cache_data.clear()


def show_counts(stats: dict) -> None:
    counts = dataset_view.stats_counts(stats)
    patients = dataset_view.stats_patients(stats)
    left, right = st.columns(2)
    left.plotly_chart(dataset_view.counts_figure(counts), key="dataset_counts_chart")
    right.plotly_chart(dataset_view.bar_figure(patients, "Patients per class", "patients"),
                       key="dataset_patients_chart")
    table = counts.copy()
    table["total"] = table.sum(axis=1)
    st.dataframe(table, key="dataset_counts_table")


def show_grid(index: pd.DataFrame) -> None:
    st.subheader("Sample images")
    cols = st.columns([1, 1, 1, 1, 1], vertical_alignment="bottom")
    split = cols[0].selectbox("Split", ["all"] + common.present(index["split"], common.SPLIT_ORDER),
                              key="dataset_split")
    class_name = cols[1].selectbox("Class", ["all", *data.CLASSES], key="dataset_class")
    pathogen = cols[2].selectbox("Pathogen", ["all", "bacteria", "virus", "none"], key="dataset_pathogen")
    st.session_state.setdefault("dataset_seed", 0)
    cols[3].number_input("Shuffle seed", min_value=0, step=1, key="dataset_seed")
    cols[4].button("Reshuffle", key="dataset_reshuffle", on_click=_reshuffle)

    rows = common.filter_index(index, split, class_name, pathogen)
    if rows.empty:
        st.info("No image matches these filters.")
        return
    pages = dataset_view.n_pages(len(rows), PER_PAGE)
    page = st.number_input(f"Page (of {pages}; {len(rows)} images)", min_value=1, max_value=pages,
                           value=1, step=1, key="dataset_page")
    shown = dataset_view.shuffled_page(rows, st.session_state["dataset_seed"], page - 1, PER_PAGE)
    grid = st.columns(6)
    for i, (_, row) in enumerate(shown.iterrows()):
        with grid[i % 6]:
            thumb, info = load_thumbnail(row["path"], 192)
            if thumb is None:
                st.error(f"{row['filename']}: cannot be read.")
                continue
            st.image(thumb, caption=f"{row['class_name']} · {row['split']}", width="stretch")
            st.button("Open", key=f"dataset_open_{row['path']}", on_click=_open, args=(row["path"],),
                      width="stretch")


def _reshuffle() -> None:
    st.session_state["dataset_seed"] = int(st.session_state.get("dataset_seed", 0)) + 1
    st.session_state["dataset_page"] = 1


def _open(path: str) -> None:
    st.session_state["dataset_selected"] = path


def show_selected(index: pd.DataFrame) -> None:
    path = st.session_state.get("dataset_selected")
    if not path:
        return
    match = index[index["path"] == path]
    if match.empty:
        return
    row = match.iloc[0]
    st.subheader(row["filename"])
    left, right = st.columns([3, 2])
    view, shape = load_thumbnail(path, 900)  # cached: not decoded again on every rerun
    if view is None:
        left.error(shape)
        return
    left.image(view, width="stretch")
    right.markdown(
        f"**File:** `{row['filename']}`  \n**Patient id:** {row['patient_id']}  \n"
        f"**Class:** {row['class_name']} ({row['pathogen']})  \n**Split:** {row['split']}  \n"
        f"**Size:** {shape[1]} × {shape[0]} pixels"
    )
    right.button("Close", key="dataset_close", on_click=_open, args=(None,))


st.title("Dataset")
try:
    folder = fileio.check_allowed(st.session_state.get("data_dir", "data/chest_xray"), what="dataset folder")
except fileio.PathNotAllowed as exc:
    st.error(str(exc))
    st.stop()
try:
    root = data.find_dataset(folder)
except (data.DatasetLayoutError, FileNotFoundError) as exc:
    show_missing(folder, str(exc))
    st.stop()

stamp = folder_stamp(root)
index = load_index(str(root), stamp)
stats = load_stats(str(root), stamp)
st.caption(f"{root} · {len(index)} images · "
           f"{index['patient_id'].nunique()} patients")
show_counts(stats)
show_grid(index)
show_selected(index)

st.subheader("Image sizes")
sizes = dataset_view.stats_sizes(stats)
left, right = st.columns([3, 1])
if not sizes.empty:
    left.plotly_chart(dataset_view.sizes_figure(sizes, stats["image_sizes"].get("distinct")),
                      key="dataset_sizes_chart")
right.dataframe(dataset_view.stats_size_summary(stats), key="dataset_sizes_table")

st.subheader("Files that could not be read")
unreadable = dataset_view.stats_unreadable(stats)
if unreadable.empty:
    st.success("Every file could be read.")
else:
    st.warning(f"{len(unreadable)} files could not be read; they are left out of training.")
    st.dataframe(unreadable, key="dataset_unreadable")

if not st.session_state.get("viewer_mode"):
    with st.expander("Download the dataset again or another source"):
        show_download(folder)
