"""Batch scoring (`xray_core.scoring`, `python -m xray_core score`): rows, inputs, resume, kills."""

from __future__ import annotations

import csv
import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xray_core import scoring

PROJECT = Path(__file__).resolve().parents[1]


def _film(rng: np.random.Generator, size: int, bright: bool) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    img = 60 + 40 * np.exp(-((x - size / 2) ** 2 + (y - size / 2) ** 2) / (2 * (size / 3) ** 2))
    if bright:
        img = img + 120 * np.exp(-((x - 0.7 * size) ** 2 + (y - size / 2) ** 2) / (2 * (size / 8) ** 2))
    return np.clip(img + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)


def make_films(folder: Path, n: int, *, size: int = 48, seed: int = 0, nested: bool = True) -> list[Path]:
    """n small gray JPEG/PNG films (every third a PNG), spread over two sub-folders."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        sub = folder / (f"day{i % 2}" if nested else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / (f"film{i:05d}.png" if i % 3 == 0 else f"film{i:05d}.jpeg")
        Image.fromarray(_film(rng, size, bright=i % 2 == 1)).save(path)
        paths.append(path)
    return paths


def add_bad_files(folder: Path) -> dict[str, Path]:
    """A text file named .png, a truncated JPEG and an empty file: each must get an error row."""
    good = next(folder.rglob("*.jpeg")).read_bytes()
    bad = {"text": folder / "notes.png", "truncated": folder / "cut.jpeg", "empty": folder / "empty.dcm"}
    bad["text"].write_text("this is a report, not an image\n")
    bad["truncated"].write_bytes(good[: len(good) // 3])
    bad["empty"].write_bytes(b"")
    return bad


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def read_rows_bytes(data: bytes) -> list[dict]:
    return list(csv.DictReader(data.decode("utf-8").splitlines()))


@pytest.fixture()
def films(tmp_path) -> Path:
    folder = tmp_path / "worklist"
    make_films(folder, 20)
    return folder


def _score(tiny_run, source, out, **kw):
    runs_root, run_id = tiny_run
    kw.setdefault("workers", 0)
    return scoring.score(run_id, source, out, root=runs_root, progress=False, **kw)


def _cli(tiny_run, *args) -> list[str]:
    runs_root, run_id = tiny_run
    return [sys.executable, "-m", "xray_core", "score", run_id, *map(str, args), "--runs-dir", str(runs_root)]


# ------------------------------------------------------------------------------ rows


def test_one_row_per_file_and_bad_files_do_not_stop_the_run(tiny_run, films, tmp_path):
    bad = add_bad_files(films)
    (films / "README.txt").write_text("not a film: left out by its suffix\n")
    out = tmp_path / "scores.csv"
    summary = _score(tiny_run, films, out, batch_size=7)
    rows = read_rows(out)
    assert list(rows[0]) == scoring.COLUMNS
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 23
    assert not any(p.endswith("README.txt") for p in paths)
    by_path = {r["path"]: r for r in rows}
    for what, path in bad.items():
        row = by_path[str(path)]
        assert row["error"], what
        assert row["probability"] == "" and row["verdict"] == "", what
    assert "not an image" in by_path[str(bad["text"])]["error"]
    assert "empty" in by_path[str(bad["empty"])]["error"]
    good = [r for r in rows if not r["error"]]
    assert len(good) == 20
    for r in good:
        p, t = float(r["probability"]), float(r["threshold"])
        assert r["verdict"] == ("PNEUMONIA" if p >= t else "NORMAL")
        assert len(r["sha256"]) == 64 and r["run_id"] == tiny_run[1]
    assert summary["scored"] == 23 and summary["errors"] == 3
    assert summary["flagged"] == sum(r["verdict"] == "PNEUMONIA" for r in good)
    # the tiny model learned bright blob = pneumonia: the odd films (with the blob) score higher
    blob = [float(r["probability"]) for r in good if int(Path(r["path"]).stem[4:]) % 2 == 1]
    plain = [float(r["probability"]) for r in good if int(Path(r["path"]).stem[4:]) % 2 == 0]
    assert np.mean(blob) > np.mean(plain)


def test_probabilities_equal_the_predict_command(tiny_run, films, tmp_path):
    """Without draft decoding, a row's probability is `predict`'s for the same file (1e-4)."""
    runs_root, run_id = tiny_run
    files = sorted(films.rglob("*.*"))[:6]
    out = tmp_path / "scores.csv"
    _score(tiny_run, films, out, draft=False)
    scored = {r["path"]: float(r["probability"]) for r in read_rows(out)}
    proc = subprocess.run([sys.executable, "-m", "xray_core", "predict", run_id, *map(str, files), "--json",
                           "--runs-dir", str(runs_root)], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    predicted = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(predicted) == 6
    for entry in predicted:
        assert abs(scored[entry["image"]] - entry["probability"]) <= 1e-4, entry


def test_folder_zip_and_list_give_the_same_scores(tiny_run, films, tmp_path):
    files = sorted(p for p in films.rglob("*") if p.is_file())
    archive = tmp_path / "night.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in files:
            zf.write(p, p.relative_to(films).as_posix())
        zf.writestr("__MACOSX/day0/._film00000.png", b"junk")
    listing = tmp_path / "list.csv"
    listing.write_text("path,accession\n" + "".join(f"worklist/{p.relative_to(films).as_posix()},A{i}\n"
                                                     for i, p in enumerate(files)) + "worklist/gone.jpeg,A99\n")
    outs = {}
    for name, source in (("folder", films), ("zip", archive), ("list", listing)):
        _score(tiny_run, source, tmp_path / f"out_{name}.csv")
        outs[name] = read_rows(tmp_path / f"out_{name}.csv")
    rel = {"folder": lambda p: Path(p).relative_to(films).as_posix(),
           "zip": lambda p: p.split(scoring.ZIP_SEP, 1)[1],
           "list": lambda p: Path(p).relative_to(tmp_path / "worklist").as_posix()}
    probs = {name: {rel[name](r["path"]): r["probability"] for r in rows if not r["error"]} for name, rows in outs.items()}
    assert len(probs["folder"]) == 20
    assert probs["zip"] == probs["folder"] == probs["list"]
    assert [r["path"] for r in outs["zip"]][0].startswith(str(archive) + "!")
    gone = [r for r in outs["list"] if r["path"].endswith("gone.jpeg")]
    assert len(gone) == 1 and "does not exist" in gone[0]["error"]
    # a zip member can be read back (the Worklist page opens rows in Diagnose this way)
    member = outs["zip"][0]["path"]
    assert scoring.read_item_bytes(member) == (films / member.split("!", 1)[1]).read_bytes()


def test_rows_carry_the_answer_of_the_gate_run_on_its_own(tiny_run, tmp_path):
    """The rows take the gate's features from the scoring's own forward pass: the gate fields
    equal those of gate.check_batch computing its features with a pass of its own."""
    from xray_core import gate, gate_fit, imaging
    from xray_core.model import load_model

    runs_root, run_id = tiny_run
    root = tmp_path / "models"
    shutil.copytree(runs_root / run_id, root / run_id)  # the session's run stays without a gate
    folder = tmp_path / "films"
    paths = make_films(folder, 100, size=100)
    model = load_model(root / run_id, cache=False)
    images = [imaging.decode(p) for p in paths]
    x = model.prepare_batch(images)
    fitted = gate_fit.fit_gate(model, x[:70], x[70:])
    out = tmp_path / "scores.csv"
    scoring.score(run_id, folder, out, root=root, workers=0, progress=False, draft=False, batch_size=32)
    rows = {r["path"]: r for r in read_rows(out)}
    expected = gate.check_batch(model, images, gate=fitted)
    for path, result in zip(paths, expected):
        row = rows[str(path)]
        assert row["in_distribution"] == str(result.in_distribution), path
        assert float(row["ood_score"]) == pytest.approx(result.ood_score, rel=1e-4), path
    assert {r["in_distribution"] for r in rows.values()} >= {"True"}


# ------------------------------------------------------------------------------ resume


def test_rerun_skips_scored_files_and_scores_new_ones(tiny_run, films, tmp_path):
    out = tmp_path / "scores.csv"
    first = _score(tiny_run, films, out)
    assert first["scored"] == 20
    again = _score(tiny_run, films, out)
    assert again["scored"] == 0 and again["already_scored"] == 20
    make_films(films / "late", 1, seed=9, nested=False)
    third = _score(tiny_run, films, out)
    assert third["scored"] == 1 and third["already_scored"] == 20
    paths = [r["path"] for r in read_rows(out)]
    assert len(paths) == len(set(paths)) == 21


def test_torn_last_line_is_dropped_and_rescored(tiny_run, films, tmp_path):
    out = tmp_path / "scores.csv"
    _score(tiny_run, films, out)
    data = out.read_bytes()
    lines = data.splitlines(keepends=True)
    # as if killed in the middle of writing the last row
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    summary = _score(tiny_run, films, out)
    assert summary["scored"] == 1
    rows = read_rows(out)
    assert len(rows) == len({r["path"] for r in rows}) == 20
    before = read_rows_bytes(data)
    assert [r["path"] for r in rows] == [r["path"] for r in before]  # the same row, written whole again
    for a, b in zip(rows, before):
        assert {k: v for k, v in a.items() if k != "probability"} == {k: v for k, v in b.items() if k != "probability"}
        assert abs(float(a["probability"]) - float(b["probability"])) < 1e-6  # batch of 1 vs 20: float rounding


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_has_every_file_exactly_once(tiny_run, tmp_path):
    folder = tmp_path / "archive"
    files = make_films(folder, 600, size=32)
    out = tmp_path / "scores.csv"
    cmd = _cli(tiny_run, folder, "--out", out, "--batch-size", "4", "--workers", "1", "--quiet")
    proc = subprocess.Popen(cmd, cwd=PROJECT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if out.exists() and out.read_bytes().count(b"\n") > 40:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the scoring ended before it could be killed: " + proc.stderr.read().decode()[-500:]
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
        proc.stderr.close()
    killed_rows = out.read_bytes().count(b"\n") - 1
    assert 0 < killed_rows < len(files)
    done = subprocess.run(cmd + ["--json"], cwd=PROJECT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    rows = read_rows(out)
    paths = [r["path"] for r in rows]
    assert sorted(paths) == sorted(str(p) for p in files)  # every file, exactly once
    assert all(r["probability"] and not r["error"] for r in rows)
    assert summary["already_scored"] == killed_rows and summary["scored"] + summary["already_scored"] == 600
    assert summary["images_per_second"] > 0


def test_a_job_that_fails_keeps_its_rows_closes_its_file_and_says_failed(tiny_run, films, tmp_path, monkeypatch):
    from xray_core.scoring import job

    scored_rows = job.overlapped_rows

    def fails_after_one_chunk(*args, **kwargs):
        chunks = scored_rows(*args, **kwargs)
        yield next(chunks)
        raise RuntimeError("the disk went away")

    monkeypatch.setattr(job, "overlapped_rows", fails_after_one_chunk)
    out, status = tmp_path / "scores.csv", tmp_path / "status.json"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(RuntimeError, match="disk went away"):
            _score(tiny_run, films, out, batch_size=8, status_path=status)
        gc.collect()  # an output left open would warn here, when the failed job is collected
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert len(read_rows(out)) == 8
    assert json.loads(status.read_text())["state"] == "failed"
    monkeypatch.undo()
    assert _score(tiny_run, films, out, batch_size=8)["already_scored"] == 8
    assert len(read_rows(out)) == 20


def test_parquet_output_resumes_from_parts(tiny_run, films, tmp_path):
    out = tmp_path / "scores.parquet"

    def stop_after_first_chunk(summary):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _score(tiny_run, films, out, batch_size=8, on_chunk=stop_after_first_chunk)
    parts = tmp_path / "scores.parquet.parts"
    assert not out.exists() and len(list(parts.glob("part-*.parquet"))) == 1
    summary = _score(tiny_run, films, out, batch_size=8)
    assert summary["already_scored"] == 8 and summary["scored"] == 12
    assert out.exists() and not parts.exists()
    table = scoring.read_scores(out)
    assert len(table) == 20 and table["path"].is_unique
    assert list(table.columns) == scoring.COLUMNS
    _score(tiny_run, films, tmp_path / "scores.csv")
    csv_table = scoring.read_scores(tmp_path / "scores.csv").set_index("path")
    assert np.allclose(table.set_index("path").loc[csv_table.index, "probability"], csv_table["probability"])


# ------------------------------------------------------------------------------ refusals


def test_output_of_another_run_is_refused(tiny_run, films, tmp_path):
    runs_root, run_id = tiny_run
    other_root = tmp_path / "models"
    shutil.copytree(runs_root / run_id, other_root / "other-run")
    out = tmp_path / "scores.csv"
    _score(tiny_run, films, out)
    with pytest.raises(scoring.ScoreError, match="holds scores of the run"):
        scoring.score("other-run", films, out, root=other_root, workers=0, progress=False)
    assert len(read_rows(out)) == 20


def test_output_over_the_input_list_is_refused(tiny_run, films, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(str(next(films.rglob("*.png"))) + "\n")
    with pytest.raises(scoring.ScoreError, match="is the input"):
        _score(tiny_run, listing, listing)
    assert listing.read_text().count("\n") == 1


def test_missing_input_is_a_sentence(tiny_run, tmp_path):
    with pytest.raises(scoring.ScoreError, match="does not exist"):
        _score(tiny_run, tmp_path / "nowhere", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()


def test_cli_error_is_one_line_without_traceback(tiny_run, tmp_path):
    proc = subprocess.run(_cli(tiny_run, tmp_path / "nowhere", "--out", tmp_path / "x.csv"), cwd=PROJECT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
