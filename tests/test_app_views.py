"""The page-side helpers in app/ (common, dataset_view, train_view): shaping that pages show."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pandas as pd
import pytest

from app import common, dataset_view, train_view
from xray_core import runs

INDEX = pd.DataFrame({
    "split": ["train", "train", "val", "test", "test"],
    "class_name": ["NORMAL", "PNEUMONIA", "PNEUMONIA", "NORMAL", "PNEUMONIA"],
    "pathogen": ["none", "virus", "bacteria", "none", "virus"],
})


def test_filters_and_present():
    assert common.filter_index(INDEX, split="test").index.tolist() == [3, 4]
    assert common.filter_index(INDEX, class_name="PNEUMONIA", pathogen="virus").index.tolist() == [1, 4]
    assert common.filter_index(INDEX).index.tolist() == [0, 1, 2, 3, 4]
    assert common.present(["test", "train"], common.SPLIT_ORDER) == ["train", "test"]


def test_resolve_folder_is_relative_to_the_project(tmp_path):
    assert common.resolve_folder("data/chest_xray") == common.PROJECT_ROOT / "data" / "chest_xray"
    assert common.resolve_folder(f"  {tmp_path}  ") == tmp_path


@pytest.mark.parametrize("seconds, text", [(None, "–"), (float("nan"), "–"), (12, "12 s"), (185, "3 min 05 s"),
                                           (3720, "1 h 02 min")])
def test_format_seconds(seconds, text):
    assert common.format_seconds(seconds) == text


def test_fmt():
    assert common.fmt(None) == "–" and common.fmt(0.12345) == "0.123" and common.fmt("n/a") == "n/a"


def test_run_label_names_the_run_and_what_it_is_not_a_training_hospital_figure(tmp_path):
    shipped = {r.run_id: common.run_label(r) for r in runs.list_runs(common.PROJECT_ROOT / "trained_models")}
    assert shipped["default"] == "default — ensemble of 3 pneumonet, the bundled model"
    assert shipped["seed-model3"] == "seed-model3 — the original study's model 3"
    assert shipped["seed-baseline"] == "seed-baseline — the original study's baseline model"
    trained = SimpleNamespace(run_id="r1", path=tmp_path / "r1", config={"arch": "baseline", "created": "2026-12-03T10:00"},
                              metrics={"validation": {"roc_auc": 0.9123}})
    assert common.run_label(trained) == "r1 — the original study's baseline model, trained 2026-12-03"
    derived = tmp_path / "site-a"
    derived.mkdir()
    (derived / "model.json").write_text(json.dumps({"parent": "../default", "provenance": {
        "films": {"NORMAL": 120, "PNEUMONIA": 180}}}))
    info = SimpleNamespace(run_id="site-a", path=derived, metrics={"validation": {"roc_auc": 0.97}},
                           config={"arch": "pneumonet", "members": [{}, {}, {}],
                                   "derived_from": {"run": "default", "kind": "site recalibration"}})
    assert common.run_label(info) == "site-a — default recalibrated on 300 films of a site"
    assert common.run_label(SimpleNamespace(run_id="r2", config={}, metrics=None)) == "r2"
    assert not [label for label in [*shipped.values(), common.run_label(trained)] if "AUC" in label]


def test_usable_runs_puts_default_first_then_the_newest(tmp_path):
    def info(run_id, created, state="completed", model=True):
        folder = tmp_path / run_id
        folder.mkdir()
        if model:
            (folder / "model.keras").write_bytes(b"x")
        return SimpleNamespace(run_id=run_id, path=folder, state=state, config={"created": created})

    runs = [info("old", "2026-01-01"), info("default", "2025-01-01"), info("new", "2026-06-01"),
            info("running", "2026-07-01", state="running"), info("no-model", "2026-08-01", model=False)]
    assert [r.run_id for r in common.usable_runs(runs)] == ["default", "new", "old"]


def test_shuffled_pages_are_fixed_by_the_seed_and_cover_every_row():
    df = pd.DataFrame({"i": range(23)})
    pages = [dataset_view.shuffled_page(df, 7, p, 10)["i"].tolist() for p in range(dataset_view.n_pages(23, 10))]
    assert [len(p) for p in pages] == [10, 10, 3]
    assert sorted(sum(pages, [])) == list(range(23))
    assert pages[0] == dataset_view.shuffled_page(df, 7, 0, 10)["i"].tolist()
    assert pages[0] != dataset_view.shuffled_page(df, 8, 0, 10)["i"].tolist()
    assert dataset_view.n_pages(0, 10) == 1


def test_thumbnail_keeps_the_aspect_and_leaves_small_images_alone():
    import numpy as np

    img = np.zeros((600, 300), np.uint8)
    assert dataset_view.thumbnail(img, 256).shape == (256, 128)
    small = np.zeros((100, 50), np.uint8)
    assert dataset_view.thumbnail(small, 256) is small


def test_stats_tables():
    stats = {"counts": {"train": {"NORMAL": 3, "PNEUMONIA": 5}, "test": {"NORMAL": 1}},
             "image_sizes": {"most_common": [[100, 80, 4]], "width": {"min": 1}, "height": {"min": 2}},
             "unreadable": [{"path": "a.jpeg", "reason": "cut"}]}
    counts = dataset_view.stats_counts(stats)
    assert counts.loc["test", "PNEUMONIA"] == 0 and counts.loc["train", "PNEUMONIA"] == 5
    assert dataset_view.stats_sizes(stats).to_dict("records") == [{"width": 100, "height": 80, "images": 4}]
    assert dataset_view.stats_unreadable(stats)["reason"].tolist() == ["cut"]


def test_seconds_per_epoch_reads_matching_completed_runs(tmp_path):
    def info(run_id, seconds, arch="baseline", state="completed"):
        folder = tmp_path / run_id
        folder.mkdir()
        pd.DataFrame({"epoch": range(1, len(seconds) + 1), "seconds": seconds}).to_csv(folder / "history.csv",
                                                                                        index=False)
        return SimpleNamespace(run_id=run_id, path=folder, state=state,
                               config={"arch": arch, "image_size": 100, "channels": 1})

    infos = [info("a", [10.0, 12.0]), info("b", [30.0]), info("c", [99.0], arch="model2"),
             info("d", [99.0], state="failed")]
    assert train_view.seconds_per_epoch(infos, "baseline", 100, 1) == 12.0
    assert train_view.seconds_per_epoch(infos, "baseline", 64, 1) is None
