"""AppTest of the Dataset page on the synthetic dataset (and with no dataset at all)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from streamlit.testing.v1 import AppTest

from tests.apptest_helpers import APP, open_page
from tests.synthetic import make_synthetic_dataset



def table_with(at: AppTest, column: str):
    """The first st.dataframe whose columns or index hold `column` (display tables have no key)."""
    for frame in at.dataframe:
        value = frame.value
        if column in value.columns or column in value.index:
            return value
    raise AssertionError(f"no table with {column!r} on the page")


def open_dataset_page(monkeypatch, data_dir: Path, models_dir: Path) -> AppTest:
    return open_page(monkeypatch, data_dir, models_dir, "pages/dataset.py")


def test_dataset_page_shows_counts_patients_sizes_and_opens_an_image(monkeypatch, synthetic_dataset, tmp_path):
    at = open_dataset_page(monkeypatch, synthetic_dataset, tmp_path)

    counts = table_with(at, "total")
    # tests/synthetic.py defaults: train 24/36, val 4/4, test 8/8 (NORMAL/PNEUMONIA).
    assert counts.loc["train"].tolist() == [24, 36, 60]
    assert counts.loc["val"].tolist() == [4, 4, 8]
    assert counts.loc["test"].tolist() == [8, 8, 16]
    assert any("84 images" in c.value for c in at.caption)
    sizes = table_with(at, "width")
    assert sizes.loc["width", "max"] == 48 and sizes.loc["height", "min"] == 48
    assert any("Every file could be read" in s.value for s in at.success)

    # The grid shows one page of 12; a filter narrows it; Open shows the file's details.
    opens = [b for b in at.button if b.key.startswith("dataset_open_")]
    assert len(opens) == 12
    at.selectbox(key="dataset_split").set_value("test")
    at.selectbox(key="dataset_class").set_value("PNEUMONIA")
    at.selectbox(key="dataset_pathogen").set_value("virus").run()
    opens = [b for b in at.button if b.key.startswith("dataset_open_")]
    assert 0 < len(opens) < 8 and all("virus" in b.key and "/test/" in b.key for b in opens)
    first = opens[0].key
    opens[0].click().run()
    details = " ".join(m.value for m in at.markdown)
    name = Path(first.removeprefix("dataset_open_")).name
    assert f"`{name}`" in details and "48 × 48 pixels" in details
    assert "**Patient id:** person" in details

    # Reshuffle changes the seed and so the order of the grid.
    before = [b.key for b in at.button if b.key.startswith("dataset_open_")]
    at.selectbox(key="dataset_split").set_value("all").run()
    before = [b.key for b in at.button if b.key.startswith("dataset_open_")]
    at.button(key="dataset_reshuffle").click().run()
    after = [b.key for b in at.button if b.key.startswith("dataset_open_")]
    assert at.number_input(key="dataset_seed").value == 1 and before != after


def test_dataset_page_lists_unreadable_files(monkeypatch, tmp_path):
    root = make_synthetic_dataset(tmp_path / "chest_xray", n_train=(4, 4), n_val=(0, 0), n_test=(0, 0))
    (root / "train" / "NORMAL" / "IM-9999-0001.jpeg").write_bytes(b"not a jpeg at all")
    at = open_dataset_page(monkeypatch, root, tmp_path / "models")
    assert any("1 files could not be read" in w.value for w in at.warning)
    unreadable = table_with(at, "reason")
    assert unreadable["path"].str.endswith("IM-9999-0001.jpeg").tolist() == [True]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        """Keep the test output clean."""


def test_without_dataset_the_page_explains_the_layout_and_downloads_from_a_mirror(monkeypatch, tmp_path):
    """The Download button runs the real download code against a local HTTP server."""
    src = make_synthetic_dataset(tmp_path / "src" / "chest_xray", n_train=(3, 3), n_val=(0, 0),
                                 n_test=(2, 2), size=32)
    served = tmp_path / "served"
    served.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in sorted(src.rglob("*.jpeg")):
            archive.write(path, "chest_xray/" + path.relative_to(src).as_posix())
    (served / "ChestXRay2017.zip").write_bytes(buffer.getvalue())
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Quiet(*a, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "data"
        # The administrator allows the download folder and the local mirror (tests/test_security.py
        # checks that neither is allowed without this).
        monkeypatch.setenv("XRAY_ALLOWED_ROOTS", str(dest))
        monkeypatch.setenv("XRAY_DOWNLOAD_HOSTS", "127.0.0.1")
        monkeypatch.setenv("XRAY_DOWNLOAD_PRIVATE_NETWORKS", "127.0.0.1/32")
        at = open_dataset_page(monkeypatch, dest / "chest_xray", tmp_path / "models")
        assert at.warning and "train" in at.code[0].value and "PNEUMONIA" in at.code[0].value
        assert any("10.17632/rscbjbr9sj.3" in m.value for m in at.markdown)
        assert at.text_input(key="dataset_download_dest").value == str(dest)
        at.text_input(key="dataset_download_url").set_value(
            f"http://127.0.0.1:{httpd.server_address[1]}/ChestXRay2017.zip")
        at.button(key="dataset_download").click().run()
        assert not at.exception, at.exception
        assert not at.error, [e.value for e in at.error]
        assert any(str(dest / "chest_xray") in s.value for s in at.success)
        assert sorted(p.name for p in (dest / "chest_xray" / "train" / "PNEUMONIA").iterdir()) == \
            sorted(p.name for p in (src / "train" / "PNEUMONIA").iterdir())
        # The next run of the page finds the data.
        at.run()
        assert table_with(at, "total").loc["train"].tolist() == [3, 3, 6]
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_no_page_imports_tensorflow_or_keras_into_the_server(synthetic_dataset, tiny_run):
    """The app opens (Diagnose with a model, no image yet) and shows every other page without importing
    TensorFlow or Keras (Streamlit would clear a Keras session, with a full garbage collection, after
    every script run); the Train page's layer table comes from a child process."""
    script = f"""
import sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({APP!r}, default_timeout=60)
at.run()
assert not at.exception, at.exception
assert at.selectbox(key="diagnose_run").value == {tiny_run[1]!r}  # the page got past the model pick
explain = sys.modules["xray_core.explain"]  # loaded by the page (without TensorFlow: see below)
assert at.selectbox(key="diagnose_segmentation").value == explain.DEFAULT_LIME["segmentation"]
at.switch_page("pages/dataset.py").run()
assert not at.exception, at.exception
assert any(f.value.loc["train", "total"] == 60 for f in at.dataframe if "total" in f.value)
at.switch_page("pages/train.py").run()
assert not at.exception, at.exception
# The seed's baseline has 1,282,482 parameters at 100x100x3; with 1 channel its first convolution has
# 5*5*2*32 = 1,600 fewer: the child process built the page's network.
labels = [e.label for e in at.expander]
assert "Layers of baseline at 100×100×1: 1,280,882 parameters" in labels, labels
for page in ("pages/compare.py", "pages/worklist.py", "pages/validate.py"):
    at.switch_page(page).run()
    assert not at.exception, (page, at.exception)
print("tensorflow" in sys.modules, "keras" in sys.modules)
"""
    env = dict(os.environ, XRAY_DATA_DIR=str(synthetic_dataset), XRAY_MODELS_DIR=str(tiny_run[0]))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                         cwd=Path(APP).parent, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"]
