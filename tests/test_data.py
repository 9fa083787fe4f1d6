"""xray_core.data: layout checks, file-name parsing, the patient split, the cached loader, stats."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import REAL_DATA, requires_real_data
from tests.synthetic import make_synthetic_dataset
from xray_core import data, fileio, imaging
from xray_core.data import DatasetLayoutError


@pytest.fixture()
def dataset(tmp_path) -> Path:
    """A private synthetic dataset (tests here modify files)."""
    return make_synthetic_dataset(tmp_path / "chest_xray", n_train=(12, 16), n_val=(2, 2),
                                  n_test=(2, 2), size=32)


# ------------------------------------------------------------------------------- layout


def test_find_dataset_accepts_root_and_parent(dataset):
    assert data.find_dataset(dataset) == dataset.resolve()
    assert data.find_dataset(dataset.parent) == dataset.resolve()


def test_missing_folder_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetLayoutError) as err:
        data.find_dataset(tmp_path / "nowhere")
    assert "nowhere" in str(err.value) and "does not exist" in str(err.value)
    assert "train/NORMAL" in str(err.value)


def test_folder_without_train_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetLayoutError) as err:
        data.find_dataset(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "no train folder" in message and "images" in message
    assert "ROOT/train/NORMAL and ROOT/train/PNEUMONIA" in message


def test_missing_class_folder_is_named(tmp_path):
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="has no PNEUMONIA folder"):
        data.find_dataset(tmp_path)


def test_file_instead_of_folder(tmp_path):
    f = tmp_path / "x.zip"
    f.write_bytes(b"PK\x03\x04")
    with pytest.raises(DatasetLayoutError, match="is a file, not a folder"):
        data.find_dataset(f)


def test_train_without_images_is_refused(tmp_path):
    for c in ("NORMAL", "PNEUMONIA"):
        (tmp_path / "train" / c).mkdir(parents=True)
    with pytest.raises(DatasetLayoutError, match="holds no .jpeg"):
        data.index_dataset(tmp_path)


def test_any_case_folders_and_junk_ignored(tmp_path):
    arr = np.full((8, 8), 100, np.uint8)
    for split, cls in (("Train", "normal"), ("Train", "Pneumonia"), ("VAL", "NORMAL"), ("VAL", "pneumonia")):
        folder = tmp_path / split / cls
        folder.mkdir(parents=True)
        Image.fromarray(arr).save(folder / "IM-0001-0001.JPEG")
        Image.fromarray(arr).save(folder / "person3_virus_7.png")
        (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
        (folder / "._IM-0001-0001.jpeg").write_bytes(b"AppleDouble junk")
        (folder / "notes.txt").write_text("not an image")
    (tmp_path / "__MACOSX").mkdir()
    df = data.index_dataset(tmp_path)
    assert len(df) == 8
    assert set(df["split"]) == {"train", "val"}
    assert set(df["class_name"]) == {"NORMAL", "PNEUMONIA"}
    assert list(df.columns) == ["path", "filename", "split", "label", "class_name", "patient_id", "pathogen"]
    assert all(Path(p).is_absolute() for p in df["path"])


# ------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("name, patient, pathogen", [
    ("IM-0115-0001.jpeg", "0115", "none"),
    ("IM-0429-0001-0002.jpeg", "0429", "none"),  # 133 of the train folder's names have two numbers
    ("NORMAL2-IM-1427-0001-0002.jpeg", "NORMAL2-1427", "none"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-1427", "none"),
    ("person1946_bacteria_4874.jpeg", "person1946", "bacteria"),
    ("person1_virus_6.jpeg", "person1", "virus"),
    ("scan-42.png", "scan-42", "none"),
])
def test_parse_filename(name, patient, pathogen):
    assert data.parse_filename(name) == (patient, pathogen)


def test_index_labels_and_patients(synthetic_dataset):
    df = data.index_dataset(synthetic_dataset)
    assert (df["label"] == (df["class_name"] == "PNEUMONIA")).all()
    assert df.groupby(["split", "class_name"]).size().to_dict() == {
        ("test", "NORMAL"): 8, ("test", "PNEUMONIA"): 8, ("train", "NORMAL"): 24,
        ("train", "PNEUMONIA"): 36, ("val", "NORMAL"): 4, ("val", "PNEUMONIA"): 4}
    normal2 = df[df["filename"].str.startswith("NORMAL2-")]
    assert len(normal2) and normal2["patient_id"].str.startswith("NORMAL2-").all()
    pneu = df[df["class_name"] == "PNEUMONIA"]
    assert pneu["patient_id"].str.match(r"^person\d+$").all()
    assert set(pneu["pathogen"]) == {"bacteria", "virus"}
    assert set(df.loc[df["class_name"] == "NORMAL", "pathogen"]) == {"none"}


# ------------------------------------------------------------------------------- splitting


def _many_patients(n_patients=(40, 60), seed=1) -> pd.DataFrame:
    """An index-like frame (no files) with 1-4 images per patient."""
    rng = np.random.default_rng(seed)
    rows = []
    for label, n in enumerate(n_patients):
        for p in range(n):
            pid = f"{p:04d}" if label == 0 else f"person{p}"
            for k in range(int(rng.integers(1, 5))):
                rows.append({"path": f"/d/{label}/{pid}-{k}.jpeg", "filename": f"{pid}-{k}.jpeg",
                             "split": "train", "label": label,
                             "class_name": data.CLASSES[label], "patient_id": pid, "pathogen": "none"})
    rows.append({"path": "/d/val/x.jpeg", "filename": "x.jpeg", "split": "val", "label": 0,
                 "class_name": "NORMAL", "patient_id": "9999", "pathogen": "none"})
    return pd.DataFrame(rows)


def test_patient_split_has_no_overlap_and_is_stratified():
    df = _many_patients()
    train, val = data.split_train(df, seed=3)
    assert not set(train["patient_id"]) & set(val["patient_id"])
    assert len(train) + len(val) == (df["split"] == "train").sum()
    assert "9999" not in set(train["patient_id"]) | set(val["patient_id"])
    for label in (0, 1):
        n_class = ((df["split"] == "train") & (df["label"] == label)).sum()
        frac = (val["label"] == label).sum() / n_class
        assert 0.15 <= frac <= 0.25, (label, frac)


def test_split_is_seeded():
    df = _many_patients()
    a = data.split_train(df, seed=7)[1]["path"].tolist()
    b = data.split_train(df.sample(frac=1, random_state=0), seed=7)[1]["path"].tolist()
    c = data.split_train(df, seed=8)[1]["path"].tolist()
    assert a == b  # row order of the input does not matter
    assert a != c


def test_image_split_is_the_seeds_75_25():
    df = _many_patients()
    n = (df["split"] == "train").sum()
    train, val = data.split_train(df, method="image", seed=0)
    assert len(val) == round(n * 0.25) and len(train) + len(val) == n
    assert data.split_train(df, method="image", seed=0)[1]["path"].tolist() == val["path"].tolist()


@pytest.mark.parametrize("kwargs, match", [
    ({"method": "random"}, "method must be"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"val_fraction": 0}, "val_fraction"),
])
def test_split_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        data.split_train(_many_patients(), **kwargs)


# ------------------------------------------------------------------------------- loading


def test_load_images_shapes_values_and_order(dataset, tmp_path):
    df = data.index_dataset(dataset)
    paths = df["path"].tolist()[::-1]  # not sorted: output must follow the input order
    res = data.load_images(paths, size=(16, 20), cache_dir=tmp_path / "c")
    assert res.images.shape == (len(paths), 16, 20, 1) and res.images.dtype == np.float32
    assert res.ok.all() and res.failed == [] and res.n_decoded == len(paths)
    for i in (0, 5, len(paths) - 1):
        expected = imaging.decode_resized(paths[i], (16, 20))
        np.testing.assert_array_equal(res.images[i, ..., 0], expected)
    assert res.images.max() > 1.0  # raw 0..255, not scaled

    three = data.load_images(paths, size=(16, 20), channels=3, cache_dir=tmp_path / "c")
    assert three.images.shape == (len(paths), 16, 20, 3) and three.n_decoded == 0
    np.testing.assert_array_equal(three.images[..., 2], res.images[..., 0])


def test_decode_resized_is_close_to_decode_then_resize(dataset):
    path = next((dataset / "train" / "NORMAL").iterdir())
    a = imaging.decode_resized(path, (16, 16)).astype(int)
    b = imaging.resize(imaging.decode(path), (16, 16)).astype(int)
    assert np.abs(a - b).mean() < 3


def test_cache_second_load_decodes_nothing(dataset, tmp_path):
    paths = data.index_dataset(dataset)["path"].tolist()
    calls = []
    first = data.load_images(paths, size=(24, 24), cache_dir=tmp_path / "c",
                             progress=lambda d, t: calls.append((d, t)))
    assert first.n_decoded == len(paths)
    assert calls[-1] == (len(paths), len(paths)) and all(t == len(paths) for _, t in calls)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    second = data.load_images(list(reversed(paths)), size=(24, 24), cache_dir=tmp_path / "c")
    assert second.n_decoded == 0
    np.testing.assert_array_equal(second.images[::-1], first.images)
    # A different size or method is a different entry.
    assert data.load_images(paths, size=(20, 24), cache_dir=tmp_path / "c").n_decoded == len(paths)
    assert data.load_images(paths, size=(24, 24), method="nearest",
                            cache_dir=tmp_path / "c").n_decoded == len(paths)


def test_default_cache_dir_follows_env(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("XRAY_CACHE_DIR", str(tmp_path / "envcache"))
    assert fileio.default_cache_dir() == tmp_path / "envcache"
    res = data.load_images(data.index_dataset(dataset)["path"][:3], size=(8, 8))
    assert res.cache_path is not None and res.cache_path.parent == tmp_path / "envcache"
    assert res.cache_path.is_file() and not list((tmp_path / "envcache").glob(".*tmp"))


def test_touching_or_altering_a_file_invalidates_the_cache(dataset, tmp_path):
    paths = data.index_dataset(dataset)["path"].tolist()
    cache = tmp_path / "c"
    data.load_images(paths, size=(24, 24), cache_dir=cache)
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert data.load_images(paths, size=(24, 24), cache_dir=cache).n_decoded == len(paths)
    assert data.load_images(paths, size=(24, 24), cache_dir=cache).n_decoded == 0
    # Rewrite a file with new content (white image): the new pixels come back.
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(paths[1], format="JPEG")
    res = data.load_images(paths, size=(24, 24), cache_dir=cache)
    assert res.n_decoded == len(paths) and res.images[1].min() > 250


def test_unreadable_files_are_counted_and_named(dataset, tmp_path):
    paths = data.index_dataset(dataset)["path"].tolist()
    broken = Path(paths[2])
    broken.write_bytes(broken.read_bytes()[:-200])  # truncated JPEG
    empty = Path(paths[4])
    empty.write_bytes(b"")
    html = Path(paths[6])
    html.write_text("<!DOCTYPE html><html><body>Access denied</body></html>")
    res = data.load_images(paths, size=(16, 16), cache_dir=tmp_path / "c")
    assert res.ok.sum() == len(paths) - 3 and not res.ok[[2, 4, 6]].any()
    assert res.images.shape[0] == len(paths) - 3
    assert [p for p, _ in res.failed] == [str(broken), str(empty), str(html)]
    reasons = dict(res.failed)
    assert "truncated" in reasons[str(broken)] and "empty" in reasons[str(empty)]
    assert "HTML" in reasons[str(html)]
    # The cache remembers the failures, so a warm load reports them too.
    again = data.load_images(paths, size=(16, 16), cache_dir=tmp_path / "c")
    assert again.n_decoded == 0 and again.failed == res.failed
    np.testing.assert_array_equal(again.images, res.images)


def test_process_and_thread_pools_agree(tmp_path):
    root = make_synthetic_dataset(tmp_path / "big", n_train=(70, 70), n_val=(0, 0), n_test=(0, 0),
                                  size=24)
    paths = data.index_dataset(root)["path"].tolist()
    a = data.load_images(paths, size=(12, 12), use_cache=False, pool="thread", workers=2)
    b = data.load_images(paths, size=(12, 12), use_cache=False, pool="process", workers=2)
    c = data.load_images(paths, size=(12, 12), use_cache=False, workers=1)
    assert a.n_decoded == b.n_decoded == c.n_decoded == 140
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.images, c.images)


def test_unwritable_cache_warns_and_still_loads(dataset, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    paths = data.index_dataset(dataset)["path"].tolist()[:4]
    with pytest.warns(RuntimeWarning, match="could not be written"):
        res = data.load_images(paths, size=(8, 8), cache_dir=blocker / "sub")
    assert res.images.shape == (4, 8, 8, 1) and res.cache_path is None


def test_load_rejects_bad_options(dataset):
    with pytest.raises(ValueError, match="channels"):
        data.load_images([], channels=2)
    with pytest.raises(ValueError, match="method"):
        data.load_images([], method="cubic-spline")
    empty = data.load_images([], size=(8, 8))
    assert empty.images.shape == (0, 8, 8, 1) and empty.failed == []


# ------------------------------------------------------------------------------- stats


def test_dataset_stats_counts_sizes_and_unreadable(dataset):
    df = data.index_dataset(dataset)
    bad = Path(df["path"].iloc[0])
    bad.write_bytes(b"")
    stats = data.dataset_stats(df)
    assert stats["counts"] == {"train": {"NORMAL": 12, "PNEUMONIA": 16},
                               "val": {"NORMAL": 2, "PNEUMONIA": 2},
                               "test": {"NORMAL": 2, "PNEUMONIA": 2}}
    assert stats["n_images"] == 36
    assert stats["patients"]["NORMAL"] == df.loc[df["label"] == 0, "patient_id"].nunique()
    assert stats["patients_by_split"]["train"]["PNEUMONIA"] == 8
    assert stats["image_sizes"]["most_common"] == [[32, 32, 35]]
    assert stats["image_sizes"]["width"] == {"min": 32, "median": 32.0, "max": 32}
    assert stats["n_unreadable"] == 1
    assert stats["unreadable"][0]["path"] == str(bad) and "empty" in stats["unreadable"][0]["reason"]
    import json
    json.dumps(stats)  # JSON-ready for the CLI and the page


def test_dataset_stats_reads_headers_only(dataset):
    """A file whose header is fine but whose pixels are cut off is not decoded by stats."""
    df = data.index_dataset(dataset)
    path = Path(df["path"].iloc[3])
    path.write_bytes(path.read_bytes()[:-200])
    assert data.dataset_stats(df)["n_unreadable"] == 0


# ------------------------------------------------------------------------------- real data


@requires_real_data
def test_real_dataset_counts_and_patient_split():
    df = data.index_dataset(REAL_DATA)
    counts = df.groupby(["split", "class_name"]).size().to_dict()
    assert counts[("train", "NORMAL")] == 1341 and counts[("train", "PNEUMONIA")] == 3875
    assert counts[("val", "NORMAL")] == 8 and counts[("val", "PNEUMONIA")] == 8
    assert data.find_dataset(REAL_DATA.parent) == REAL_DATA.resolve()
    train, val = data.split_train(df, seed=0)
    assert not set(train["patient_id"]) & set(val["patient_id"])
    assert len(train) + len(val) == 5216
    assert 0.18 <= len(val) / 5216 <= 0.22
    for label in (0, 1):
        frac = (val["label"] == label).sum() / (df.loc[df["split"] == "train", "label"] == label).sum()
        assert 0.18 <= frac <= 0.22
    # Patients really do have several images, so an image-level split would leak.
    _, image_val = data.split_train(df, method="image", seed=0)
    image_train = df[(df["split"] == "train") & ~df["path"].isin(image_val["path"])]
    assert set(image_train["patient_id"]) & set(image_val["patient_id"])


def test_cache_keeps_recent_entries_only(dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_MAX_CACHE_ENTRIES", 2)
    paths = data.index_dataset(dataset)["path"].tolist()[:3]
    cache = tmp_path / "c"
    first = data.load_images(paths, size=(8, 8), cache_dir=cache).cache_path
    os.utime(first, (1, 1))  # long unused...
    data.load_images(paths, size=(9, 9), cache_dir=cache)
    assert data.load_images(paths, size=(8, 8), cache_dir=cache).n_decoded == 0  # ...until used now
    data.load_images(paths, size=(10, 10), cache_dir=cache)
    assert len(list(cache.glob("images-*.npy"))) == 2 and len(list(cache.glob("images-*.json"))) == 2
    assert first.is_file()  # the (8, 8) entry was used more recently than (9, 9)
    assert data.load_images(paths, size=(9, 9), cache_dir=cache).n_decoded == 3
