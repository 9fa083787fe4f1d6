"""How well the input gate separates chest films from what it must refuse.

Real chest films (must pass): the run's validation split and the 118 full-resolution
originals. Unsuitable inputs (must be flagged): scikit-image's and pydicom's bundled sample
images (never used to fit the gate), synthetic non-X-rays made here, and the originals made
unsuitable (inverted, turned, upside down, a corner crop). Every input goes through the product
path: file bytes -> `gate.check_source` (decode, colour, DICOM header, gate). A file the decoder
refuses counts as refused (no verdict is given for it), and is listed apart.

    python benchmarks/gate.py [--run default] [--data ../shared/data]

writes benchmarks/reports/gate.md and gate.json.
"""

from __future__ import annotations

import argparse
import warnings
import io
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xray_core import data, gate, imaging  # noqa: E402
from xray_core.model import load_model  # noqa: E402

REPORTS = ROOT / "benchmarks" / "reports"


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=92)
    return buf.getvalue()


def skimage_samples() -> dict[str, bytes]:
    import skimage.data as d

    out = {}
    for name in ("astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea",
                 "clock", "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
                 "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
                 "shepp_logan_phantom", "text"):
        arr = np.asarray(getattr(d, name)())
        if arr.dtype == bool:
            arr = arr.astype(np.uint8) * 255
        elif arr.dtype != np.uint8:
            arr = (255 * (arr - arr.min()) / max(float(np.ptp(arr)), 1e-9)).astype(np.uint8)
        out[f"skimage:{name}"] = png(arr)
    return out


def pydicom_samples() -> dict[str, bytes]:
    import warnings

    import pydicom
    from pydicom.data import get_testdata_files

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in sorted(get_testdata_files("*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (pydicom.errors.InvalidDicomError, OSError, ValueError):
                continue
            if "Rows" in ds:
                out[f"pydicom:{Path(path).name}"] = Path(path).read_bytes()
    return out


def synthetic_samples(seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    s = 512
    y, x = np.mgrid[0:s, 0:s]
    out = {
        "flat gray": np.full((s, s), 128, np.uint8),
        "black": np.zeros((s, s), np.uint8),
        "horizontal gradient": (x / s * 255).astype(np.uint8),
        "uniform noise": rng.integers(0, 256, (s, s), dtype=np.uint8),
        "gaussian noise": np.clip(rng.normal(128, 40, (s, s)), 0, 255).astype(np.uint8),
        "sine pattern": (127.5 + 127.5 * np.sin(x / 9.0) * np.cos(y / 13.0)).astype(np.uint8),
        "rings": (127.5 + 127.5 * np.cos(np.hypot(x - s / 2, y - s / 2) / 6.0)).astype(np.uint8),
        "thin strip": np.tile((x[:60] / s * 255).astype(np.uint8), (1, 1)),
        "tiny": rng.integers(0, 256, (40, 40), dtype=np.uint8),
    }
    doc = Image.new("L", (s, s), 250)
    draw = ImageDraw.Draw(doc)
    for row in range(20, s - 20, 18):
        draw.text((20, row), "Lorem ipsum dolor sit amet, consectetur adipiscing " * 2, fill=10)
    out["text document"] = np.asarray(doc)
    shapes = Image.new("RGB", (s, s), (20, 20, 20))
    draw = ImageDraw.Draw(shapes)
    for _ in range(25):
        x0, y0 = rng.integers(0, s - 60, 2)
        draw.ellipse([int(x0), int(y0), int(x0 + rng.integers(20, 120)), int(y0 + rng.integers(20, 120))],
                     fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    out["coloured shapes"] = np.asarray(shapes)
    out["gray shapes"] = np.asarray(shapes.convert("L"))
    bars = np.zeros((s, s, 3), np.uint8)
    for i, c in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255), (255, 0, 255)]):
        bars[:, i * s // 6:(i + 1) * s // 6] = c
    out["colour bars"] = bars
    return {f"synthetic:{k}": png(v) for k, v in out.items()}


def corrupted_originals(paths: list[Path]) -> dict[str, bytes]:
    out = {}
    for p in paths:
        g = imaging.decode(p)
        h, w = g.shape
        out[f"inverted:{p.name}"] = jpeg(255 - g)
        out[f"turned 90:{p.name}"] = jpeg(np.rot90(g).copy())
        out[f"upside down:{p.name}"] = jpeg(np.rot90(g, 2).copy())
        out[f"corner crop:{p.name}"] = jpeg(g[: h // 3, : w // 3].copy())
    return out


def run_set(model, items: dict[str, bytes]) -> list[dict]:
    rows = []
    for name, raw in items.items():
        try:
            _, res, _ = gate.check_source(model, raw, filename=name.split(":", 1)[1])
        except imaging.ImageDecodeError as exc:
            rows.append({"name": name, "refused_by_decoder": True, "flagged": True, "reason": str(exc)})
            continue
        rows.append({"name": name, "refused_by_decoder": False, "flagged": not res.in_distribution,
                     "ood_score": res.ood_score, "warnings": res.warnings})
    return rows


def main(argv=None) -> int:
    warnings.simplefilter("ignore")  # pydicom's notes on its own odd sample files
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="default")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    model = load_model(Path(args.run) if "/" in args.run else args.run)
    if gate.load_gate(model.path) is None:
        raise SystemExit(f"run {model.run_id} has no fitted gate: python -m xray_core fit-gate {model.run_id} --data DIR")
    data_root = Path(args.data)
    from xray_core import evaluation, runs

    val_paths, _ = evaluation.validation_rows(runs.Run(model.path), str(data.find_dataset(data_root / "chest_xray")))
    originals = sorted(p for p in (data_root / "originals").rglob("*") if p.is_file())
    sets = {
        "real: validation split": {f"val:{p}": Path(p).read_bytes() for p in val_paths},
        "real: full-resolution originals": {f"orig:{p.name}": p.read_bytes() for p in originals},
        "unsuitable: scikit-image samples": skimage_samples(),
        "unsuitable: pydicom samples": pydicom_samples(),
        "unsuitable: synthetic non-X-rays": synthetic_samples(),
        "unsuitable: originals inverted / turned / cropped": corrupted_originals(originals),
    }
    results = {name: run_set(model, items) for name, items in sets.items()}
    summary = {}
    for name, rows in results.items():
        flagged = sum(r["flagged"] for r in rows)
        summary[name] = {"n": len(rows), "flagged": flagged, "flagged_share": flagged / max(len(rows), 1),
                         "refused_by_decoder": sum(r["refused_by_decoder"] for r in rows)}
    real = [r for k, rows in results.items() if k.startswith("real") for r in rows]
    bad = [r for k, rows in results.items() if k.startswith("unsuitable") for r in rows]
    overall = {"real_flagged_share": float(np.mean([r["flagged"] for r in real])),
               "unsuitable_flagged_share": float(np.mean([r["flagged"] for r in bad])),
               "n_real": len(real), "n_unsuitable": len(bad)}
    import sklearn
    import tensorflow as tf

    meta = {"command": "python benchmarks/gate.py " + " ".join(argv or sys.argv[1:]), "run": model.run_id,
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores (shared)",
            "versions": {"python": platform.python_version(), "numpy": np.__version__,
                         "tensorflow": tf.__version__, "scikit-learn": sklearn.__version__},
            "seconds": round(time.perf_counter() - t0, 1), "gate_fit": gate.load_gate(model.path).info}
    missed = [r["name"] for r in bad if not r["flagged"]]
    false_flags = [{"name": r["name"].split("/")[-1], "warnings": r.get("warnings")} for r in real if r["flagged"]]
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS / "gate.json").write_text(json.dumps({"meta": meta, "overall": overall, "sets": summary,
                                                   "missed_unsuitable": missed, "flagged_real": false_flags},
                                                  indent=2) + "\n")
    lines = [
        "# Input gate: chest films let through, unsuitable inputs flagged", "",
        f"Run `{model.run_id}`; command `{meta['command']}`; {meta['machine']}; "
        f"Python {meta['versions']['python']}, TensorFlow {meta['versions']['tensorflow']}; {meta['seconds']} s.", "",
        f"**Real chest films flagged: {overall['real_flagged_share']:.1%}** of {overall['n_real']} "
        f"(goal <= 2 %). **Unsuitable inputs flagged: {overall['unsuitable_flagged_share']:.1%}** of "
        f"{overall['n_unsuitable']} (goal >= 90 %).", "",
        "| set | images | flagged | share | refused by the decoder |", "|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['n']} | {s['flagged']} | {s['flagged_share']:.1%} | {s['refused_by_decoder']} |")
    lines += ["", "The gate was fitted on the run's training films only (`python -m xray_core fit-gate`); its "
              "thresholds were set on the validation films, so the validation row measures the threshold's "
              "own quantile and the originals row is the fairer figure for films it never saw (they are "
              "the full-resolution versions of dataset films, not new patients). The scikit-image and "
              "pydicom samples were never used in fitting.", "",
              "Unsuitable inputs not flagged: " + (", ".join(missed) if missed else "none") + ".", "",
              "Real films flagged: " + (", ".join(f["name"] for f in false_flags) if false_flags else "none") + ".",
              "", "Images: Kermany, Zhang, Goldbaum (2018), Mendeley Data, CC BY 4.0. Research software, not a "
              "medical device."]
    (REPORTS / "gate.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
