"""The patched build at kernel parity: what it would count if the stage ran each of its layers at the
instructions per MAC of that layer's own kernel layer by layer.

Issue 13 bounds the patched build by layer by layer x (1 + MAC overhead + 2 %): the network's MAC overhead, as if
every recomputed MAC cost the network's average. Recompute mode's extra MACs fall on the stem and the early layers
(their regions overlap most), which are also the dearest per MAC (a 3x3 stem, depthwise layers, 1x1 layers over
few channels). So the bound can be out of reach even with stage kernels as fast as the per-layer ones; this
figure says whether it is (at parity within the bound: what is missing is in the stage's kernels) or not (the
stage must beat the per-layer kernels per MAC).

    parity = layer by layer + sum over the stage's layers' calls of count x (patched MACs / MACs - 1)

from the profiled layer-by-layer run's calls (execution order) and the analytic MACs of each conv layer of the
stage (`stage_layer_macs`: layer by layer, patch by patch). The stage's calls are the shortest prefix of the calls
whose MAC-doing calls have exactly the stage's layers' MACs; each takes the ratio of the first stage layer, in layer
order, with its MACs. Calls without MACs before the first of them (a float input's quantization) take the ratio of
the input elements the patches read to the input's (`stage_input_reads`: recompute mode quantizes every patch's
input region again); calls without MACs between them (a residual add, a pool) count once, a lower bound.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from bench.results import count as _count


def parity_extra(calls: list[dict[str, Any]], layer_macs: list[list[int]],
                 input_reads: tuple[int, int] | list[int] | None = None) -> int | None:
    """What the stage's layers' calls would add to the layer-by-layer count at their patched MACs, and the calls
    before them at ``input_reads`` = (input elements, elements the patches read) (module docstring); None when the
    calls' MACs do not match the stage's layers (or a count is missing)."""
    if not layer_macs or not calls or any(_count(c) is None for c in calls):
        return None
    image, read = input_reads or (1, 1)
    pending = Counter(m for m, _ in layer_macs)
    ratios: dict[int, list[float]] = {}  # MACs -> the patched / layer-by-layer ratios of the layers with them
    for m, patched in layer_macs:
        ratios.setdefault(m, []).append(patched / m)
    extra, started = 0, False
    for c in calls:
        if not pending:
            break
        macs = c.get("macs") or 0
        if macs == 0:
            if not started:  # before the stage's first layer: work on the stage's input
                extra += round(_count(c) * (read / image - 1))
            continue
        started = True
        if pending[macs] == 0:
            return None  # a call the stage has no layer for before the stage's layers are all seen
        pending[macs] -= 1
        if pending[macs] == 0:
            del pending[macs]
        extra += round(_count(c) * (ratios[macs].pop(0) - 1))
    return None if pending else extra
