"""``tvm-patch costmodel eval``: the latency model's error on the held-out whole networks (real networks
that ``collect`` marks held out and ``train`` never reads): per network |predicted - measured| / measured of
one inference's total count, per op type the same error over their kernels, and per network the measured and
predicted counts of each op type (where a network's error comes from)."""

from __future__ import annotations

from typing import Any

from tvm_patch.cost.latency import LatencyModel
from tvm_patch.errors import TvmPatchError


def evaluate(model: LatencyModel, records: list[dict[str, Any]]) -> dict[str, Any]:
    """The evaluation JSON: mape, within_10pct_share, n_heldout, per_op, and every network's figures."""
    held = [r for r in records if r.get("heldout") and r.get("core") == model.core and r.get("unit") == model.unit
            and all(k.get("measured") for k in r["rows"])]
    if not held:
        raise TvmPatchError(f"no held-out {model.core} measurements to evaluate on; run `tvm-patch costmodel "
                            "collect` (it measures the held-out networks after the training set)")
    nets, per_op = [], {}
    for r in held:
        pred = model.network_count(r["rows"], r["io_bytes"])
        by_op: dict[str, list[int]] = {}  # op -> [measured, predicted], summed over the network's kernels
        for row, k in zip(r["rows"], model.kernel_counts(r["rows"])):
            per_op.setdefault(row["op"], []).append(abs(k - row["measured"]) / row["measured"])
            acc = by_op.setdefault(row["op"], [0, 0])
            acc[0] += row["measured"]
            acc[1] += round(k)
        nets.append({"id": r["id"], "model": r["model"], "plan": r["plan"], "measured": r["total"],
                     "predicted": round(pred), "error": round((pred - r["total"]) / r["total"], 4),
                     "by_op": {op: {"measured": m, "predicted": p, "share_of_error": round((p - m) / r["total"], 4)}
                               for op, (m, p) in sorted(by_op.items(), key=lambda kv: -kv[1][0])}})
    errs = [abs(n["error"]) for n in nets]
    return {
        "mape": round(sum(errs) / len(errs), 4),
        "within_10pct_share": round(sum(e <= 0.10 for e in errs) / len(errs), 4),
        "n_heldout": len(nets),
        "per_op": {op: {"n_kernels": len(v), "mape": round(sum(v) / len(v), 4)} for op, v in sorted(per_op.items())},
        "core": model.core,
        "unit": model.unit,
        "trained_on": model.meta,
        "networks": nets,
    }
