"""The core CLI commands, in-process through cli.main and once as a real subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from xray_core import cli

PROJECT = Path(__file__).resolve().parents[1]
COMMANDS = ("dataset", "train", "runs", "evaluate", "predict", "explain", "download")


def _main(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", COMMANDS)
def test_help_for_every_command(command, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: xray {command}") and "--verbose" in out


def test_every_command_names_a_handler_that_exists():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(COMMANDS) <= set(sub.choices)
    for name, command_parser in sub.choices.items():
        handler = cli.resolve_handler(command_parser.get_default("handler"))
        assert callable(handler), name


def test_help_imports_no_tensorflow():
    code = ("import sys\nfrom xray_core import cli\n"
            "try:\n    cli.main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_explain_choices_match_the_library():
    from xray_core import explain

    parser = cli.build_parser()
    args = parser.parse_args(["explain", "default", "x.png", "--out-dir", "o"])
    assert (args.recipe, args.samples, args.segmentation) == ("dashboard", None, None)  # Diagnose's settings
    assert parser.parse_args(["explain", "r", "x.png", "--out-dir", "o", "--recipe", "seed"]).recipe == "seed"
    for segmentation in explain.SEGMENTATIONS:
        assert parser.parse_args(["explain", "r", "x.png", "--out-dir", "o", "--segmentation", segmentation])
    for label in explain.CLASSES:
        assert parser.parse_args(["explain", "r", "x.png", "--out-dir", "o", "--label", label]).label == label


@pytest.mark.parametrize("argv, message", [
    (["train", "--data", "d", "--epochs", "0"], "at least 1"),
    (["train", "--data", "d", "--val-fraction", "1.5"], "strictly between 0 and 1"),
    (["train", "--data", "d", "--lr", "-1"], "positive number"),
    (["train", "--data", "d", "--arch", "nope"], "unknown architecture 'nope'; choose one of: baseline"),
    (["download", "--url", "ftp://mirror/x.zip"], "http:// or https://"),
    (["download", "--md5", "abc"], "32 hexadecimal digits"),
    (["explain", "r", "x.png", "--out-dir", "o", "--samples", "0"], "at least 1"),
])
def test_bad_values_are_refused_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch):
    """Only the library's user-facing errors become one line; any other exception propagates."""
    from xray_core import commands

    def broken(args):
        raise ValueError("an internal bug, not a user error")

    monkeypatch.setattr(commands, "_runs", broken)
    with pytest.raises(ValueError, match="internal bug"):
        cli.main(["runs"])


def test_dataset_prints_counts_and_unreadable_files(tmp_path, capsys):
    from tests.synthetic import make_synthetic_dataset

    root = make_synthetic_dataset(tmp_path / "chest_xray", size=16)
    (root / "train" / "PNEUMONIA" / "person9_bacteria_1.jpeg").write_bytes(b"not an image")
    code, out, _ = _main(capsys, "dataset", "--data", tmp_path)
    assert code == 0
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert lines["train"][1:4] == ["24", "37", "61"]
    assert lines["test"][1:4] == ["8", "8", "16"]
    assert "unreadable   1" in out and "person9_bacteria_1.jpeg" in out
    code, out, _ = _main(capsys, "dataset", "--data", root, "--json")
    assert code == 0 and json.loads(out)["counts"]["val"] == {"NORMAL": 4, "PNEUMONIA": 4}


def test_dataset_error_is_one_line(tmp_path, capsys):
    code, out, err = _main(capsys, "dataset", "--data", tmp_path / "nothing")
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1


@pytest.mark.slow
def test_train_then_runs_then_evaluate(synthetic_dataset, tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    code, out, err = _main(capsys, "train", "--arch", "baseline", "--data", synthetic_dataset, "--epochs", "1",
                           "--batch-size", "16", "--image-size", "16", "--runs-dir", runs_dir,
                           "--run-id", "cli-run", "--seed", "3", "--class-weight", "balanced")
    assert code == 0, err
    assert out.strip() == "cli-run"
    assert "epoch 1/1" in err and "validation: AUC" in err  # progress lines (stderr is not a tty)
    config = json.loads((runs_dir / "cli-run" / "config.json").read_text())
    assert config["seed"] == 3 and config["class_weight"] == "balanced" and config["image_size"] == 16

    code, out, _ = _main(capsys, "runs", "--runs-dir", runs_dir)
    header, _, row = out.splitlines()[:3]
    assert header.split()[:4] == ["run", "arch", "state", "epoch"]
    assert row.split()[:4] == ["cli-run", "baseline", "completed", "1/1"]
    code, out, _ = _main(capsys, "runs", "--runs-dir", runs_dir, "--json")
    assert [json.loads(line)["status"]["state"] for line in out.splitlines()] == ["completed"]

    code, out, _ = _main(capsys, "evaluate", "cli-run", "--runs-dir", runs_dir, "--split", "test", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["n"] == 16 and result["tp"] + result["fn"] == 8
    code, out, _ = _main(capsys, "evaluate", "cli-run", "--runs-dir", runs_dir, "--data", synthetic_dataset)
    assert code == 0 and "sensitivity" in out and "on val" in out


def test_train_errors_are_one_line_sentences(synthetic_dataset, tmp_path, capsys):
    code, _, err = _main(capsys, "train", "--arch", "model4", "--data", synthetic_dataset,
                           "--image-size", "16", "--runs-dir", tmp_path)
    assert code == 1 and "model4 needs images of at least 38 pixels" in err and err.count("\n") == 1
    code, _, err = _main(capsys, "train", "--runs-dir", tmp_path)
    assert code == 1 and "--data" in err
    code, _, err = _main(capsys, "train", "--resume", "../elsewhere", "--runs-dir", tmp_path)
    assert code == 1 and "path" in err
    assert list(tmp_path.iterdir()) == []


def test_runs_on_empty_registry_and_evaluate_of_missing_run(tmp_path, capsys):
    code, out, _ = _main(capsys, "runs", "--runs-dir", tmp_path)
    assert code == 0 and "no runs" in out
    code, _, err = _main(capsys, "evaluate", "ghost", "--runs-dir", tmp_path, "--data", tmp_path)
    assert code == 1 and "ghost" in err and "xray_core runs" in err


def test_predict_in_process_labels_and_bad_files(tiny_run, synthetic_dataset, tmp_path, capsys):
    runs_root, run_id = tiny_run
    images = sorted((synthetic_dataset / "test" / "PNEUMONIA").iterdir())[:2]
    junk = tmp_path / "notes.jpeg"
    junk.write_text("<html>not an x-ray</html>")
    code, out, err = _main(capsys, "predict", run_id, *images, junk, "--runs-dir", runs_root, "--json")
    assert code == 1  # one file failed
    results = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["image"]).name for r in results] == [p.name for p in images] + [junk.name]
    refused = results.pop()  # the unreadable file has an answer too: refused, with the reason
    assert refused["in_distribution"] is False and refused["label"] is None and "not" in refused["warnings"][0]
    from xray_core.model import load_model

    from xray_core import imaging

    run = load_model(run_id, root=runs_root)
    # What the CLI prints is what the model object computes for each file (and its label at the run's threshold).
    expected = run.predict_proba(run.prepare_batch([imaging.decode(p) for p in images]))
    for r, p in zip(results, expected):
        assert {"in_distribution", "ood_score", "warnings", "prediction_set"} <= set(r)
        assert r["in_distribution"] is False and "48 x 48 pixels" in r["warnings"][0]  # too small to read
        assert r["probability"] == pytest.approx(float(p), abs=1e-6) and r["threshold"] == pytest.approx(run.threshold)
        assert r["label"] == ("PNEUMONIA" if p >= run.threshold else "NORMAL")
    assert err.startswith(f"error: {junk}") and err.count("\n") == 1
    # A run given as a folder path works too.
    code, out, _ = _main(capsys, "predict", runs_root / run_id, images[0])
    assert code == 0 and images[0].name in out


def test_predict_as_a_real_subprocess(tiny_run, synthetic_dataset, tmp_path):
    runs_root, run_id = tiny_run
    image = sorted((synthetic_dataset / "test" / "NORMAL").iterdir())[0]
    env = dict(os.environ, PYTHONPATH=str(PROJECT), XRAY_MODELS_DIR=str(runs_root), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "xray_core", "predict", run_id, str(image)],
                          env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    header, _, row = proc.stdout.splitlines()[:3]
    assert header.split()[:3] == ["image", "label", "pneumonia"]
    from xray_core import imaging
    from xray_core.model import load_model

    model = load_model(run_id, root=runs_root)
    p = float(model.predict_proba(model.prepare_batch([imaging.decode(image)]))[0])
    assert row.split()[0] == str(image) and row.split()[1] == ("PNEUMONIA" if p >= model.threshold else "NORMAL")
    escape = subprocess.run([sys.executable, "-m", "xray_core", "predict", "../../etc", str(image)],
                            env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert escape.returncode == 1 and escape.stderr.startswith("error: ") and escape.stderr.count("\n") == 1


def test_every_library_error_class_is_a_user_error():
    """Each error class the library defines for its users is printed as one sentence by the CLI,
    and USER_ERRORS names only classes that exist."""
    import importlib
    import inspect
    import pkgutil

    import xray_core

    listed = set()
    for module_name, names in cli.USER_ERRORS.items():
        module = importlib.import_module(module_name)
        for name in names:
            cls = getattr(module, name)
            assert inspect.isclass(cls) and issubclass(cls, Exception), (module_name, name)
            listed.add(cls)
    defined = set()
    for info in pkgutil.walk_packages(xray_core.__path__, "xray_core."):
        if info.name.endswith("__main__"):
            continue  # importing it runs the CLI
        module = importlib.import_module(info.name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == info.name and issubclass(cls, ValueError) and cls is not cli.UsageError:
                defined.add(cls)
    missing = {f"{c.__module__}.{c.__name__}" for c in defined if not any(issubclass(c, k) for k in listed)}
    assert not missing, f"add these to cli.USER_ERRORS: {sorted(missing)}"


@pytest.mark.slow
def test_train_records_widths_and_schedule(capsys, synthetic_dataset, tmp_path):
    code, out, err = _main(capsys, "train", "--arch", "pneumonet", "--data", synthetic_dataset, "--epochs", "1",
                           "--image-size", "16", "--widths", "4", "8", "8", "8", "--lr-schedule", "cosine",
                           "--augment", "strong", "--runs-dir", tmp_path, "--run-id", "w", "--quiet")
    assert code == 0, err
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert config["arch_options"] == {"widths": [4, 8, 8, 8]} and config["lr_schedule"] == "cosine"
    assert config["augment"] == "strong"


def test_one_grammar_json_lines_and_the_dataset_folder_given_one_way(monkeypatch, tmp_path):
    """Every command that gives a result takes --json; every command that reads a dataset takes it as
    --data and, without it, from XRAY_DATA_DIR; --out names a file, --out-dir a folder."""
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, p in sub.choices.items():
        options = {o for a in p._actions for o in a.option_strings}
        assert "--json" in options, name
        assert not ({"--dir", "--data-dir"} & options), name
        outs = [a for a in p._actions if "--out" in a.option_strings or "--out-dir" in a.option_strings]
        for a in outs:
            assert ("folder" in a.help) == ("--out-dir" in a.option_strings), (name, a.help)
    monkeypatch.setenv("XRAY_DATA_DIR", str(tmp_path))
    for argv in (["dataset"], ["train"], ["evaluate", "default"], ["fit-gate", "default"]):
        assert cli.build_parser().parse_args(argv).data == tmp_path, argv


def test_predict_on_a_folder_says_to_use_score(tmp_path, capsys):
    code, out, err = _main(capsys, "predict", "default", tmp_path)
    assert code == 1 and out == ""
    assert "is a folder" in err and "xray score default" in err
