"""Write trained_models/default/MODEL_CARD.md from the run's own files and the ablation report.

Every figure in the card is read from trained_models/default/{config,metrics,model}.json (written
by `python -m xray_core train --preset default`) and benchmarks/reports/generalization.json
(the frozen ablation report); the prose around them is fixed here.

Usage: python -m tools.default_card [--run trained_models/default]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from xray_core import fileio

ROOT = Path(__file__).resolve().parents[1]


def _f(v, d=3):
    return "-" if v is None else f"{v:.{d}f}"


def _pct(v):
    return "-" if v is None else f"{100 * v:.1f} %"


def _ci(ci: dict, key: str) -> str:
    c = ci.get(key) or {}
    return f"{_f(c.get('low'))}-{_f(c.get('high'))}"


def render(run_dir: Path, ablation: dict | None) -> str:
    cfg = fileio.read_json(run_dir / "config.json")
    met = fileio.read_json(run_dir / "metrics.json")
    spec = fileio.read_json(run_dir / "model.json")
    val, ci = met["validation"], met["validation_ci95"]
    st = met["stress"]
    summ, pooled, pci = st["summary"], st["pooled"], st["pooled_ci95"]
    cal = met["calibration"]
    members = cfg.get("members") or []
    size = cfg["image_size"]
    widths = (cfg.get("arch_options") or {}).get("widths")
    sizes_kb = sum((run_dir / f).stat().st_size for f in spec["members"]) / 1024
    minutes = sum(float(m.get("train_seconds") or 0) for m in members) / 60
    lines = [
        "# Model card: `default` (an ensemble of three `pneumonet` networks)",
        "",
        "The model behind Diagnose, Worklist and `predict` out of the box: a frontal pediatric chest X-ray in, a "
        f"calibrated probability of pneumonia out, called PNEUMONIA at or above the operating threshold "
        f"**{_f(spec['threshold'])}**.",
        "",
        "> **Research software, not a medical device.** Not validated for clinical use; it must not be used to "
        "diagnose, triage or treat anyone.",
        "",
        "## Figures first: shift-stress validation",
        "",
        "A random split of the training hospital's films flatters a model: the first default scored "
        "validation specificity 0.996 and called four in ten healthy new patients PNEUMONIA, because it keyed on "
        "how a film is framed. So this model was selected, calibrated and thresholded on a **shift-stress "
        "validation**: each validation film also under 16 fixed acquisition changes (framing: crops, zooms, "
        "shifts; habitus: a taller or narrower chest; intensity: gamma, contrast, blur, resolution). "
        f"{val['n']} validation films ({val['tn'] + val['fp']} NORMAL, {val['tp'] + val['fn']} PNEUMONIA) from "
        "patients never trained on; 95 % intervals by bootstrap over films.",
        "",
        "| set | AUC | sensitivity | specificity |",
        "|---|---|---|---|",
        f"| stress, pooled over the 16 changes | {_f(pooled['roc_auc'])} ({_ci(pci, 'roc_auc')}) | "
        f"{_f(pooled['sensitivity'])} ({_ci(pci, 'sensitivity')}) | {_f(pooled['specificity'])} ({_ci(pci, 'specificity')}) |",
        f"| stress, worst single change | {_f(summ['roc_auc']['worst'])} ({summ['roc_auc']['worst_change']}) | "
        f"{_f(summ['sensitivity']['worst'])} ({summ['sensitivity']['worst_change']}) | "
        f"{_f(summ['specificity']['worst'])} ({summ['specificity']['worst_change']}) |",
        f"| plain validation | {_f(val['roc_auc'])} ({_ci(ci, 'roc_auc')}) | {_f(val['sensitivity'])} "
        f"({_ci(ci, 'sensitivity')}) | {_f(val['specificity'])} ({_ci(ci, 'specificity')}) |",
        "",
        f"At most {_pct(summ['normal_flipped_max'])} of the NORMAL validation films called NORMAL as they are "
        "are turned to PNEUMONIA by any one change (the first default: up to 76 %). Per change:",
        "",
        "| change | kind | AUC | sensitivity | specificity | NORMAL flipped |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in st["changes"].items():
        lines.append(f"| {name} | {c.get('kind', 'as acquired')} | {_f(c['roc_auc'])} | {_f(c['sensitivity'])} | "
                     f"{_f(c['specificity'])} | {_f(c.get('normal_flipped'), 2)} |")
    lines += [
        "",
        "These are figures on films from the training hospital, stressed; they are not a measurement on new "
        "patients, which may differ in more than framing (see Limitations).",
        "",
        "## Operating threshold and calibration",
        "",
        f"- **Threshold {_f(spec['threshold'])}**: {met['threshold_policy']} (the policy is a setting of the "
        "training: `--threshold-method`).",
        f"- **Calibration**: Platt scaling of the ensemble's mean probability, sigmoid(logit(p) / T + b) with "
        f"T = {_f(cal['temperature'], 2)} and b = {_f(cal.get('bias', 0.0), 2)} (the bias undoes the balanced class "
        "weights' equal prior), fitted on the pooled stress validation and applied inside `Model.forward`. "
        "Expected calibration "
        f"error (15 bins) on the pooled stress set {_f(cal['ece_uncalibrated'])} before and {_f(cal['ece'])} "
        f"after; on the plain films {_f(cal['ece_plain'])} after.",
        "",
        "![Reliability diagram: predicted probability against the observed share of pneumonia, per bin]"
        "(reliability.png)",
        "",
        "## Recipe",
        "",
        "Reproduce (the preset trains three members of 14 epochs each, then assembles, calibrates and fits the "
        "input gate; a GPU is used without change):",
        "",
        "```bash",
        "python -m xray_core train --preset default --data data/chest_xray --run-id my-default",
        "```",
        "",
        f"- Three members, `pneumonet` widened to widths {widths} (stem, blocks 1-3), "
        f"{size}x{size} px, 1 gray channel, per-image standardisation inside the network; seeds 0, 1, 2; one "
        "shared patient-level validation split (seed 0, 20 % of patients).",
        f"- Adam {cfg['learning_rate']:g} with cosine decay over a member's epochs (14 in the preset), batch "
        f"{cfg['batch_size']}, balanced class weights.",
        "- **Strong augmentation** (`xray_core.augment`): independent vertical and horizontal zoom 0.80-1.30x, "
        "shifts up to 10 %, rotation up to 7 degrees, margins filled with the film's border mean, gamma "
        "0.75-1.33, contrast 0.7-1.3, noise, and a down-up resample for a third of the batches. No flips.",
        "- **Epoch selection on the stress validation**: after each epoch the validation films are scored under "
        "9 of the changes, and early stopping (patience "
        f"{(cfg.get('early_stopping') or {}).get('patience')}) keeps the epoch with the best pooled stress "
        "specificity at sensitivity >= 0.95 (plus a tenth of the pooled AUC).",
        "- The three members' probabilities are averaged, then calibrated and thresholded as above.",
        "",
        "| member | seed | best epoch | epochs run | training minutes |",
        "|---|---|---|---|---|",
    ]
    for i, m in enumerate(members):
        lines.append(f"| {i} | {m.get('seed')} | {m.get('best_epoch')} | {m.get('epochs_run')} | "
                     f"{_f((m.get('train_seconds') or 0) / 60, 1)} |")
    lines += ["", f"Measured here: {minutes:.0f} minutes of training in all, on 2 CPU cores shared with other "
              "work (test suites, other trainings). Member 0 was trained first with 24 epochs; the preset was "
              "then set to 14 epochs a member to fit the time budget (member 0's stress selection score had "
              "levelled off by epoch 14: see its history), and members 1 and 2 were trained with it."]
    if ablation:
        lines += ["", "## Ablation (benchmarks/reports/generalization.md)", "",
                  "| model | plain AUC | stress AUC pooled | stress spec pooled | worst spec | flipped | ECE stress |",
                  "|---|---|---|---|---|---|---|"]
        for r in ablation["rows"]:
            lines.append(f"| {r['model']} | {_f(r['plain_auc'])} | {_f(r['stress_auc_pooled'])} | "
                         f"{_f(r['stress_specificity_pooled'])} | {_f(r['stress_specificity_worst'])} "
                         f"({r['worst_change']}) | {_f(r['normal_flipped_max'], 2)} | {_f(r['ece_stress'])} |")
        lines += ["", "Each row gets its own calibration (temperature, bias) and threshold on the same pooled stress "
                  "set. Reading: strong augmentation is the lever (the same wide 192 px network with the mild "
                  "augmentation still lets one framing change flip about half the NORMAL films); size and width add "
                  "a little on top, the ensemble a little more, and calibration changes the ECE, not the ranking. "
                  "Not tried "
                  "for lack of CPU time in this round: a lung-field crop before the classifier, 224 px, label "
                  "smoothing, test-time augmentation."]
    lines += [
        "",
        "## Data and citation",
        "",
        "Kermany D., Zhang K., Goldbaum M. (2018). *Large Dataset of Labeled Optical Coherence Tomography (OCT) and "
        "Chest X-Ray Images*, Mendeley Data, V3. doi:10.17632/rscbjbr9sj.3. CC BY 4.0. Pediatric patients aged "
        "one to five from one hospital (Guangzhou Women and Children's Medical Center).",
        "",
        "Trained on the official train folder only (this project's copy: 224 px JPEGs, aspect ratio squashed). "
        "The official test split was never used for any choice; the 16-image official val folder is too small to "
        "select on.",
        "",
        "## Architecture",
        "",
        f"`xray_core.architectures.build_pneumonet(widths={widths})` at {size} px: `Rescaling(1/255)`, per-image "
        "standardisation (`LayerNormalization`, no learned scale), a strided 3x3 stem with batch normalisation and "
        "a 2x2 pool, three blocks of separable 3x3 convolutions with batch normalisation, global average "
        "pooling, dropout 0.3, `Dense(1, sigmoid)`. "
        f"{int(met.get('params', 0)):,} parameters over the three members; {sizes_kb:,.0f} kB of model files. "
        "Grad-CAM uses `block3_sepconv2` of each member, averaged. Loads with Keras `safe_mode=True`.",
        "",
        "## Limitations",
        "",
        "- One hospital, children aged one to five, frontal films: nothing here says how it behaves on adults, "
        "lateral films, other hospitals or other equipment. The input gate refuses what is clearly not a frontal "
        "chest film, not every film from elsewhere.",
        f"- Framing still moves it: the worst single change costs specificity down to "
        f"{_f(summ['specificity']['worst'])} ({summ['specificity']['worst_change']}). New patients' films may "
        "also differ in ways the stress set does not contain (age and body habitus beyond the changes tried, "
        "disease mix, equipment); expect lower figures on them than on this validation.",
        "- Labels are the dataset's (graded by two physicians, a third for the evaluation set in the original "
        "study); bacterial and viral pneumonia are one class here.",
        f"- The threshold keeps sensitivity >= 0.95 on the pooled stress set; on the plain validation films it "
        f"gives {_f(val['sensitivity'])} ({_ci(ci, 'sensitivity')}): the policy gives up some sensitivity on films "
        "framed like the training ones for specificity on films framed otherwise (a threshold for 0.95 on the "
        "plain films alone let one framing change flip 15 % of NORMAL films). A NORMAL verdict with pneumonia in "
        "the prediction set is a film to read; a PNEUMONIA verdict is a prompt for a reader, not a diagnosis.",
        "- The split by patient read 133 NORMAL file names of the form IM-NNNN-NNNN-NNNN as one patient each "
        "(fixed since; the stored split is kept): 32 children have films on both sides, 37 of the 1,044 "
        "validation films, all NORMAL, so the validation counts those 37 as new patients when they are not quite.",
        "- Measure it on your own films before use: `xray validate default LABELS` gives the figures with "
        "intervals over patients, and `xray recalibrate` fits the calibration and threshold to a site without "
        "retraining (docs/site-validation.md).",
        "",
    ]
    return "\n".join(lines)


def reliability_png(run_dir: Path) -> Path:
    """The reliability diagram (pooled stress set and plain films) as a small PNG beside the card."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cal = fileio.read_json(run_dir / "metrics.json")["calibration"]
    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect calibration")
    for key, label, style in (("bins", f"stress, pooled (ECE {cal['ece']:.3f})", "o-"),
                              ("bins_plain", f"plain films (ECE {cal['ece_plain']:.3f})", "s-")):
        bins = cal[key]
        ax.plot([b["mean_pred"] for b in bins], [b["frac_pos"] for b in bins], style, ms=4, label=label)
    ax.set_xlabel("predicted probability of pneumonia")
    ax.set_ylabel("share of films with pneumonia")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title("Reliability, validation (15 bins)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return fileio.atomic_write_bytes(run_dir / "reliability.png", buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Write the default model's MODEL_CARD.md from its files.")
    ap.add_argument("--run", type=Path, default=ROOT / "trained_models" / "default")
    ap.add_argument("--ablation", type=Path, default=ROOT / "benchmarks" / "reports" / "generalization.json")
    args = ap.parse_args(argv)
    ablation = json.loads(args.ablation.read_text()) if args.ablation.is_file() else None
    reliability_png(args.run)
    fileio.atomic_write_text(args.run / "MODEL_CARD.md", render(args.run, ablation))
    print(f"wrote {args.run / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
