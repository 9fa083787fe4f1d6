"""Does the input gate let real chest films through and flag what it must refuse?

    python -m benchmarks.gate [--run default] [--data ../shared/data]

Real chest films (must pass; goal: at most 2 % flagged): the run's validation films and the 118
full-resolution originals. Unsuitable inputs (must be flagged; goal: at least 90 %): scikit-image's
and pydicom's bundled sample images (never used to fit the gate), synthetic non-X-rays made here,
and the originals made unsuitable (inverted, turned, upside down, a corner crop). Every input
goes the product's way: file bytes -> `case.read` -> `case.assess_films` (decode, colour, DICOM
header, gate). A file the decoder refuses counts as flagged (no verdict is given for it) and is
counted apart.
"""

from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from benchmarks.harness import SHARED_DATA, Bench, validation_films
from xray_core import case, gate, imaging
from xray_core.model import load_model


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
    """Each file the product's way (`case.read`, then `case.assess_films` in batches): flagged or not."""
    rows, names, films = [], [], []
    for name, raw in items.items():
        try:
            films.append(case.read(raw, name.split(":", 1)[1]))
            names.append(name)
        except imaging.ImageDecodeError as exc:
            rows.append({"name": name, "refused_by_decoder": True, "flagged": True, "reason": str(exc)})
    for i in range(0, len(films), 64):
        for name, a in zip(names[i:i + 64], case.assess_films(model, films[i:i + 64])):
            rows.append({"name": name, "refused_by_decoder": False, "flagged": not a.in_distribution,
                         "ood_score": a.gate.ood_score, "warnings": a.gate.warnings})
    return rows


def measure(model, data: Path) -> dict:
    originals = sorted(p for p in (data / "originals").rglob("*") if p.is_file())
    sets = {
        "real: validation films": {f"val:{p}": p.read_bytes() for p, _ in validation_films(str(model.path),
                                                                                        root=data / "chest_xray")},
        "real: full-resolution originals": {f"orig:{p.name}": p.read_bytes() for p in originals},
        "unsuitable: scikit-image samples": skimage_samples(),
        "unsuitable: pydicom samples": pydicom_samples(),
        "unsuitable: synthetic non-X-rays": synthetic_samples(),
        "unsuitable: originals inverted / turned / cropped": corrupted_originals(originals),
    }
    results = {name: run_set(model, items) for name, items in sets.items()}
    summary = {name: {"n": len(rows), "flagged": sum(r["flagged"] for r in rows),
                      "flagged_share": sum(r["flagged"] for r in rows) / max(len(rows), 1),
                      "refused_by_decoder": sum(r["refused_by_decoder"] for r in rows)}
               for name, rows in results.items()}
    real = [r for k, rows in results.items() if k.startswith("real") for r in rows]
    bad = [r for k, rows in results.items() if k.startswith("unsuitable") for r in rows]
    return {"run": model.run_id, "gate_fit": gate.load_gate(model.path).info, "sets": summary,
            "real_flagged_share": float(np.mean([r["flagged"] for r in real])), "n_real": len(real),
            "unsuitable_flagged_share": float(np.mean([r["flagged"] for r in bad])), "n_unsuitable": len(bad),
            "missed_unsuitable": [r["name"] for r in bad if not r["flagged"]],
            "flagged_real": [{"name": Path(r["name"]).name, "warnings": r.get("warnings")}
                             for r in real if r["flagged"]]}


def render(r: dict) -> str:
    return "\n".join([
        f"Run `{r['run']}`. **Real chest films flagged: {r['real_flagged_share']:.1%}** of {r['n_real']} "
        f"(goal <= 2 %). **Unsuitable inputs flagged: {r['unsuitable_flagged_share']:.1%}** of "
        f"{r['n_unsuitable']} (goal >= 90 %).", "",
        "| set | images | flagged | share | refused by the decoder |", "|---|---|---|---|---|",
        *[f"| {name} | {s['n']} | {s['flagged']} | {s['flagged_share']:.1%} | {s['refused_by_decoder']} |"
          for name, s in r["sets"].items()], "",
        "The gate was fitted on the run's training films only (`xray fit-gate`) and its thresholds set on the "
        "validation films, so the validation row measures the threshold's own quantile; the originals row is the "
        "fairer figure for films it never saw (full-resolution versions of dataset films, not new patients).", "",
        "Unsuitable inputs not flagged: " + (", ".join(r["missed_unsuitable"]) or "none") + ".", "",
        "Real films flagged: " + (", ".join(f["name"] for f in r["flagged_real"]) or "none") + "."])


def main(argv=None) -> int:
    warnings.simplefilter("ignore")  # pydicom's notes on its own odd sample files
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="default")
    ap.add_argument("--data", type=Path, default=SHARED_DATA, help="folder holding chest_xray/ and originals/")
    args = ap.parse_args(argv)
    model = load_model(args.run)
    if gate.load_gate(model.path) is None:
        raise SystemExit(f"run {model.run_id} has no fitted gate: xray fit-gate {model.run_id} --data DIR")
    with Bench("gate", question="Does the input gate let chest films through and flag unsuitable inputs?") as bench:
        result = measure(model, args.data)
        print(bench.write(render(result), result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
