"""`score --ray`: the same job on a real local Ray (2 CPUs) gives the rows of the local run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.test_scoring import PROJECT, add_bad_files, make_films, read_rows
from xray_core import scoring

pytest.importorskip("ray", reason="ray is a pinned requirement; install requirements.txt")
pytestmark = pytest.mark.slow  # a real local Ray


def _by_path(rows):
    return {r["path"]: r for r in rows}


def test_ray_rows_equal_the_local_run(tiny_run, tmp_path):
    runs_root, run_id = tiny_run
    folder = tmp_path / "archive"
    make_films(folder, 120, size=40)
    add_bad_files(folder)
    local = tmp_path / "local.csv"
    scoring.score(run_id, folder, local, root=runs_root, workers=0, progress=False)

    on_ray = tmp_path / "ray.csv"
    summary = scoring.score_ray(run_id, folder, on_ray, root=runs_root, num_cpus=2, batch_size=16, progress=False)
    assert summary["scored"] == 123 and summary["errors"] == 3

    a, b = _by_path(read_rows(local)), _by_path(read_rows(on_ray))
    assert len(read_rows(on_ray)) == 123 and a.keys() == b.keys()
    for path, row in a.items():
        other = b[path]
        for column in scoring.COLUMNS:
            if column == "probability" and row[column]:
                assert abs(float(row[column]) - float(other[column])) <= 2e-6, path
            else:
                assert row[column] == other[column], (path, column)


def test_ray_command_resumes_like_the_local_one(tiny_run, tmp_path):
    """The CLI's --ray (local Ray): a half-written output is completed, no row twice."""
    runs_root, run_id = tiny_run
    folder = tmp_path / "archive"
    files = make_films(folder, 100, size=40)
    out = tmp_path / "scores.csv"
    half = tmp_path / "half.txt"
    half.write_text("".join(f"{p}\n" for p in files[:50]))
    scoring.score(run_id, half, out, root=runs_root, workers=0, progress=False)
    proc = subprocess.run([sys.executable, "-m", "xray_core", "score", run_id, str(folder), "--out", str(out),
                           "--runs-dir", str(runs_root), "--ray", "--json", "--quiet"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["already_scored"] == 50 and summary["scored"] == 50 and summary["ray"] == "local"
    paths = [r["path"] for r in read_rows(out)]
    assert sorted(paths) == sorted(str(p) for p in files)
