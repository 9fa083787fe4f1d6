"""A decoded chunk to output rows: one forward pass gives the probabilities and the input gate's
features; the gate and the prediction sets add their columns."""

from __future__ import annotations

from typing import Iterable, Iterator

from xray_core.scoring.decoding import DecodedChunk, one_line

#: Films per network call inside a chunk: the default 3-member 192 px model runs fastest at 16 on
#: 2 cores with TensorFlow; on LiteRT any batch runs alike (benchmarks/reports/forward.md).
NETWORK_BATCH = 16


def trust_hooks(model):
    """(gate, prediction sets) for `model`, each loaded once per job: gate(chunk, prepared batch,
    features) -> a GateResult per image; sets(probabilities) -> "NORMAL|PNEUMONIA"-style strings,
    or None (an empty column) when the run has no conformal calibration."""
    from xray_core import gate, uncertainty

    fitted = gate.load_gate(model.path)

    def gate_fn(chunk, prepared, features):
        return gate.check_batch(model, x=prepared, features=features, shapes=chunk.shapes,
                                saturations=chunk.saturations, dicoms=chunk.dicoms, gate=fitted)

    conf = uncertainty.load_conformal(model.path)
    if conf is None:
        return gate_fn, None
    threshold = float(model.threshold)

    def set_fn(proba):
        return ["|".join(conf.prediction_set(float(p), threshold)) for p in proba]
    return gate_fn, set_fn


def _gate_fields(result) -> tuple[str, str, str]:
    """(in_distribution, ood_score, warnings) columns of a GateResult."""
    score = result.ood_score
    return (str(bool(result.in_distribution)), "" if score is None else f"{float(score):.6g}",
            "; ".join(map(str, result.warnings)))


def forward(model, chunk: DecodedChunk, batch_size: int = NETWORK_BATCH):
    """(prepared batch, calibrated probabilities, gate features) of a chunk's decoded images, from
    one forward pass (`Model.raw_member_proba_and_features`); None when no file was readable."""
    from xray_core.model import calibrate

    if not len(chunk.images):
        return None
    prepared = model.prepare_batch(list(chunk.images))
    raw, features = model.raw_member_proba_and_features(prepared, batch_size=batch_size)
    return prepared, calibrate(raw.mean(axis=1), model.temperature, model.bias), features  # = predict_proba


def rows_of(model, chunk: DecodedChunk, forwarded, hooks=(None, None)) -> list[dict]:
    """A chunk's output rows from its forward pass: the gate and the prediction sets added."""
    from xray_core.data import CLASSES

    gate_fn, set_fn = hooks
    n_ok = len(chunk.images)
    gates, sets = [None] * n_ok, [""] * n_ok
    if forwarded is not None:
        prepared, proba, features = forwarded
        if gate_fn is not None:
            gates = gate_fn(chunk, prepared, features)
        if set_fn is not None:
            sets = set_fn(proba)
    threshold = float(model.threshold)
    rows, k = [], 0
    for i, item in enumerate(chunk.items):
        row = {"path": item.path, "size": item.size, "mtime_ns": item.mtime_ns, "sha256": chunk.sha256[i],
               "probability": "", "verdict": "", "threshold": repr(threshold), "in_distribution": "",
               "ood_score": "", "warnings": chunk.warnings[i], "prediction_set": "", "error": chunk.errors[i],
               "run_id": model.run_id}
        if not chunk.errors[i]:
            p = float(forwarded[1][k])
            ind, ood, notes = _gate_fields(gates[k]) if gates[k] is not None else ("", "", "")
            # repr: the exact float, so that probability >= threshold reads as the verdict did
            row.update(probability=repr(p), verdict=CLASSES[int(p >= threshold)], in_distribution=ind,
                       ood_score=ood, prediction_set=sets[k],
                       warnings="; ".join(filter(None, [chunk.warnings[i], one_line(notes)])))
            k += 1
        rows.append(row)
    return rows


def rows_for_batch(model, chunk: DecodedChunk, *, hooks=(None, None), batch_size: int = NETWORK_BATCH) -> list[dict]:
    """Score a decoded chunk and return its output rows (one forward pass for the probabilities
    and the gate's features)."""
    return rows_of(model, chunk, forward(model, chunk, batch_size), hooks)


def overlapped_rows(model, chunks: Iterable[DecodedChunk], hooks=(None, None)) -> Iterator[list[dict]]:
    """rows_for_batch over a stream of chunks, the network running on the next chunk (in a thread:
    TensorFlow and LiteRT release the GIL while they compute) while the gate and the rows of this
    one are computed."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1, thread_name_prefix="xray-forward") as pool:
        previous = None
        for chunk in chunks:
            current = (chunk, pool.submit(forward, model, chunk))
            if previous is not None:
                yield rows_of(model, previous[0], previous[1].result(), hooks)
            previous = current
        if previous is not None:
            yield rows_of(model, previous[0], previous[1].result(), hooks)
