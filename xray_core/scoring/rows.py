"""A decoded chunk to output rows, through the one assessment (`case.assess_films`): the network
runs on the next chunk while this chunk's gate, sets and rows are made."""

from __future__ import annotations

from typing import Iterable, Iterator

from xray_core.scoring.decoding import DecodedChunk, one_line


def trust_rules(model):
    """(fitted gate, conformal rule) of `model`, each loaded once per job (None where the run has none)."""
    from xray_core import gate, uncertainty

    return gate.load_gate(model.networks_dir), uncertainty.load_conformal(model.path)


def forward(model, chunk: DecodedChunk):
    """(prepared batch, Scores) of a chunk's decoded images; None when no file was readable.
    On the model's one-core lanes: overlapped_rows runs a chunk per core side by side."""
    if not len(chunk.images):
        return None
    prepared = model.prepare_batch(chunk.images)
    return prepared, model.forward(prepared, throughput=True)


def _films(chunk: DecodedChunk) -> list:
    from xray_core.case import Film

    ok = [i for i, error in enumerate(chunk.errors) if not error]
    return [Film(name=chunk.items[i].path, sha256=chunk.sha256[i], shape=chunk.shapes[k],
                 coloured_share=chunk.saturations[k], dicom=chunk.dicoms[k]) for k, i in enumerate(ok)]


def rows_of(model, chunk: DecodedChunk, forwarded, rules=(None, None)) -> list[dict]:
    """A chunk's output rows from its forward pass, assessed by `case.assess_films`."""
    from xray_core import case

    assessed = []
    if forwarded is not None:
        prepared, scores = forwarded
        assessed = case.assess_films(model, _films(chunk), x=prepared, scores=scores, gate=rules[0],
                                     conformal=rules[1])
    threshold = float(model.threshold)
    rows, k = [], 0
    for i, item in enumerate(chunk.items):
        row = {"path": item.path, "size": item.size, "mtime_ns": item.mtime_ns, "sha256": chunk.sha256[i],
               "probability": "", "verdict": "", "threshold": repr(threshold), "in_distribution": "",
               "ood_score": "", "warnings": chunk.warnings[i], "prediction_set": "", "error": chunk.errors[i],
               "run_id": model.run_id}
        if not chunk.errors[i]:
            a = assessed[k]
            k += 1
            ood = a.gate.ood_score
            shown = a.uncertainty.prediction_set
            # repr: the exact float, so that probability >= threshold reads as the verdict did
            row.update(probability=repr(a.probability), verdict=a.verdict,
                       in_distribution=str(bool(a.gate.in_distribution)),
                       ood_score="" if ood is None else f"{float(ood):.6g}",
                       prediction_set="|".join(shown) if shown is not None else "",
                       warnings="; ".join(filter(None, [chunk.warnings[i],
                                                        one_line("; ".join(map(str, a.gate.warnings)))])))
        rows.append(row)
    return rows


def rows_for_batch(model, chunk: DecodedChunk, *, rules=(None, None)) -> list[dict]:
    """Score a decoded chunk and return its output rows."""
    return rows_of(model, chunk, forward(model, chunk), rules)


def overlapped_rows(model, chunks: Iterable[DecodedChunk], rules=(None, None)) -> Iterator[list[dict]]:
    """rows_for_batch over a stream of chunks, in order: the network runs on the next chunks, one
    per core, each on a one-thread lane (in threads: LiteRT and TensorFlow release the GIL while
    they compute), while this chunk's rows are made."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from xray_core.litert import default_threads

    ahead = max(1, default_threads())
    with ThreadPoolExecutor(ahead, thread_name_prefix="xray-forward") as pool:
        waiting: deque = deque()
        for chunk in chunks:
            waiting.append((chunk, pool.submit(forward, model, chunk)))
            if len(waiting) > ahead:
                done, future = waiting.popleft()
                yield rows_of(model, done, future.result(), rules)
        while waiting:
            done, future = waiting.popleft()
            yield rows_of(model, done, future.result(), rules)
