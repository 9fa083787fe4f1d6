"""How sure is the model about this film? Split-conformal prediction sets and ensemble spread.

Split conformal (Vovk et al. 2005; Angelopoulos & Bates 2021, "A gentle introduction to
conformal prediction"): on calibration films with known labels, the nonconformity of a film
is 1 - p(its true class), with p(PNEUMONIA) = P(pneumonia) and p(NORMAL) = 1 - P(pneumonia).
q is the ceil((n + 1)(1 - alpha)) / n empirical quantile of those scores. A new film's set
holds every class c with 1 - p(c) <= q; it contains the true class with probability at least
1 - alpha when the new film is exchangeable with the calibration films. The calibration films
are the run's shift-stress validation (predictions_stress.csv) when the run has one, else its
validation split (predictions_validation.csv), and conformal.json records which.

What a reader sees: {NORMAL}, {PNEUMONIA}, or {NORMAL, PNEUMONIA} = "uncertain: needs review".
Two cases are shown as uncertain although the raw conformal set differs: an empty set (neither
class reaches the 1 - alpha level) and a single class that disagrees with the verdict at the
operating threshold. Both only add the other class, so coverage can only rise.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from xray_core.model import CLASSES

CONFORMAL_FILE = "conformal.json"
DEFAULT_ALPHA = 0.10
UNCERTAIN = "uncertain: needs review"


class UncertaintyError(ValueError):
    """Calibration asked for with data it cannot use."""


@dataclasses.dataclass
class Conformal:
    """A fitted split-conformal rule for one run."""

    alpha: float
    qhat: float
    n_calibration: int
    source: str  # which predictions file (or description) it was calibrated on

    @property
    def coverage(self) -> float:
        return 1.0 - self.alpha

    def raw_set(self, p: float) -> list[str]:
        """The conformal set itself (may be empty): classes whose 1 - p(class) <= qhat."""
        p = float(p)
        out = []
        if p <= self.qhat:  # 1 - p(NORMAL) = p
            out.append("NORMAL")
        if 1.0 - p <= self.qhat:
            out.append("PNEUMONIA")
        return out

    def prediction_set(self, p: float, threshold: float) -> list[str]:
        """What to show: a single class agreeing with the verdict, or both (needs review)."""
        raw = self.raw_set(p)
        verdict = "PNEUMONIA" if float(p) >= float(threshold) else "NORMAL"
        if raw == [verdict]:
            return raw
        return list(CLASSES)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def fit_conformal(y_true: Sequence[int], y_score: Sequence[float], *, alpha: float = DEFAULT_ALPHA,
                  source: str = "") -> Conformal:
    """Split-conformal calibration from labelled films.

    Parameters
    ----------
    y_true : sequence of int, shape (n,)
        Labels, 0 NORMAL and 1 PNEUMONIA.
    y_score : sequence of float, shape (n,)
        P(pneumonia) of the same films.
    alpha : float
        1 - the coverage asked for (0.1: sets that hold the true class of 90 % of films).
    source : str
        What the films were, recorded with the rule.

    Returns
    -------
    Conformal

    Raises
    ------
    UncertaintyError
        For labels or scores it cannot use, or too few films for the coverage asked.
    """
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(y_score, np.float64).ravel()
    if len(y) != len(s):
        raise UncertaintyError(f"y_true has {len(y)} labels but y_score has {len(s)} scores.")
    if not 0.0 < alpha < 1.0:
        raise UncertaintyError(f"alpha must be between 0 and 1 (0.1 for 90 % coverage), got {alpha!r}.")
    if not np.isin(y, (0, 1)).all():
        raise UncertaintyError("y_true must hold 0 (NORMAL) or 1 (PNEUMONIA) only.")
    n = len(y)
    level = math.ceil((n + 1) * (1 - alpha)) / max(n, 1)
    if n == 0 or level > 1.0:
        raise UncertaintyError(f"{n} calibration films are too few for {1 - alpha:.0%} coverage; "
                               f"at least {math.ceil(1 / alpha) - 1} are needed.")
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise UncertaintyError("y_score must be probabilities in 0..1.")
    nonconformity = np.where(y == 1, 1.0 - s, s)
    qhat = float(np.quantile(nonconformity, level, method="higher"))
    return Conformal(alpha=float(alpha), qhat=qhat, n_calibration=int(n), source=source)


def coverage(conf: Conformal, y_true, y_score, *, threshold: float | None = None) -> float:
    """Share of films whose set holds their true class (raw sets, or shown sets with a threshold)."""
    hits = []
    for y, p in zip(np.asarray(y_true).astype(int), np.asarray(y_score, np.float64)):
        shown = conf.raw_set(p) if threshold is None else conf.prediction_set(p, threshold)
        hits.append(CLASSES[y] in shown)
    return float(np.mean(hits)) if hits else float("nan")


def calibration_source(run_path: str | os.PathLike) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(file name, y_true, y_score) of the run's stress predictions, else its validation ones."""
    from xray_core import runs

    for split in ("stress", "validation"):
        found = runs.read_predictions(run_path, split)
        if found is not None:
            return runs.PREDICTIONS_FILE.format(split=split), found[0], found[1]
    return None


def calibrate_run(run_path: str | os.PathLike, *, alpha: float = DEFAULT_ALPHA, y_true=None,
                  y_score=None, source: str | None = None, save: bool = True) -> Conformal:
    """Fit and store conformal.json for a run, from its predictions files (or given scores)."""
    from xray_core import fileio

    if y_true is None:
        found = calibration_source(run_path)
        if found is None:
            raise UncertaintyError(
                f"The run in {run_path} has neither predictions_stress.csv nor predictions_validation.csv "
                "to calibrate on. Evaluate it first (`python -m xray_core evaluate RUN`).")
        source, y_true, y_score = found
    conf = fit_conformal(y_true, y_score, alpha=alpha, source=source or "given scores")
    if save:
        payload = conf.to_dict()
        payload["calibration_coverage"] = coverage(conf, y_true, y_score)
        fileio.atomic_write_json(Path(run_path) / CONFORMAL_FILE, payload)
    return conf


def load_conformal(run_path: str | os.PathLike) -> Conformal | None:
    """The run's conformal rule, or None when it has not been calibrated."""
    from xray_core import fileio

    path = Path(run_path) / CONFORMAL_FILE
    if not path.is_file():
        return None
    d = fileio.read_json(path)
    return Conformal(alpha=float(d["alpha"]), qhat=float(d["qhat"]), n_calibration=int(d["n_calibration"]),
                     source=str(d.get("source", "")))


@dataclasses.dataclass
class Uncertainty:
    """Uncertainty for one film, as shown beside the verdict."""

    prediction_set: list[str] | None  # None when the run has no conformal calibration
    uncertain: bool
    coverage: float | None
    calibrated_on: str | None
    member_probabilities: list[float]  # per ensemble member (one entry for a single model)
    member_spread: float | None  # max - min of the members' P(pneumonia); None for one model
    member_std: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def label(self) -> str:
        if self.prediction_set is None:
            return "not calibrated"
        return UNCERTAIN if self.uncertain else "{" + ", ".join(self.prediction_set) + "}"


def describe(p: float, threshold: float, conf: Conformal | None,
             member_p: Sequence[float] | None = None) -> Uncertainty:
    """Uncertainty of one film, as shown beside its verdict.

    Parameters
    ----------
    p : float
        The film's calibrated P(pneumonia).
    threshold : float
        The run's operating threshold (a set that disagrees with the verdict is shown as uncertain).
    conf : Conformal or None
        The run's rule; None gives no prediction set.
    member_p : sequence of float, optional
        The ensemble members' calibrated P(pneumonia), for their spread.
    """
    members = [float(v) for v in (member_p if member_p is not None else [p])]
    spread = std = None
    if len(members) > 1:
        spread = float(max(members) - min(members))
        std = float(np.std(members))
    if conf is None:
        return Uncertainty(None, False, None, None, members, spread, std)
    shown = conf.prediction_set(p, threshold)
    return Uncertainty(shown, len(shown) != 1, conf.coverage, conf.source, members, spread, std)
