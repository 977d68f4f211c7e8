"""Adaptive sampling (nn-Meter's way): after a collection, find the training networks the model predicts
worst, by k-fold cross-validation over the training networks (each predicted by a model that did not see
it), and measure neighbours of them (synth.sample_near) in the next round. Held-out networks are never
read here.
"""

from __future__ import annotations

import zlib
from typing import Any

from tvm_patch.cost.latency import fit

FOLDS = 5


def _fold(rec: dict[str, Any]) -> int:
    return zlib.crc32(str(rec.get("synth")).encode()) % FOLDS  # a network's variants stay in one fold


def cv_errors(records: list[dict[str, Any]], core: str) -> list[tuple[float, dict[str, Any]]]:
    """(relative error of the whole network, record) of every complete training record, each predicted by the
    model trained on the other folds, worst first."""
    train = [r for r in records if not r.get("heldout") and r.get("core") == core and r.get("synth") is not None
             and all(k.get("measured") for k in r["rows"])]
    out = []
    for f in range(FOLDS):
        test = [r for r in train if _fold(r) == f]
        if not test:
            continue
        model = fit([r for r in train if _fold(r) != f], core)
        for r in test:
            out.append(((model.network_count(r["rows"], r["io_bytes"]) - r["total"]) / r["total"], r))
    return sorted(out, key=lambda e: -abs(e[0]))


def near_items(records: list[dict[str, Any]], core: str, k: int, round_no: int) -> list[tuple[str, dict[str, Any]]]:
    """The items of an adaptive round: for the ``k`` distinct synthetic networks with the largest
    cross-validated error, a neighbour each, measured as the worst record was (layer by layer or patched)."""
    seen: set[int] = set()
    items = []
    for _, rec in cv_errors(records, core):
        s = int(rec["synth"])
        if s in seen or (rec.get("item") or {}).get("deep"):  # the deep round's networks are sampled apart
            continue
        seen.add(s)
        nhwc = s >= 200_000
        item = {"synth": s, "near": round_no, "inserts": s >= 100_000, "nhwc": nhwc,
                "patched": rec["plan"]["split"] is not None}
        items.append((f"adapt{round_no}-{s}-{'nhwc-' if nhwc else ''}{'patch' if item['patched'] else 'lbl'}", item))
        if len(items) == k:
            break
    return items
