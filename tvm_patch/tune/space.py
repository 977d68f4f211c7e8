"""The tuning space of one exported kernel, as a meta_schedule design space (TVM 0.27 has none for a "c"
target: meta_schedule raises "Unsupported kind").

The knob is the micro-kernels' register blocking over output channels (export/blocking.py): the space
samples ``rows`` among the blockings that divide the kernel's channels (``sch.sample_categorical``) and
applies the blocking's own schedule steps (``split_rows``) with the sampled factor, so the cost model sees
the candidate's real loop nest. The block carries two annotations, the kernel's name and the sampled rows:
the builder rebuilds the candidate with ``block_output_channels(kernel, rows)``, the export's own function,
so what is measured is exactly what ``tvm-patch build --tuning-db`` will emit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tvm_ffi
from tvm import s_tir, tirx

from tvm_patch.export.blocking import ROW_BLOCKS, rows_loop, split_rows
from tvm_patch.export.schedule import is_default_form

__all__ = ["KERNEL_KEY", "ROWS_KEY", "candidate_choice", "fixed_trace", "row_choices", "rows_space", "trace_rows"]

KERNEL_KEY = "tvm_patch.kernel"
ROWS_KEY = "tvm_patch.rows"


def row_choices(func: tirx.PrimFunc) -> list[int]:
    """The blockings a kernel can take (those dividing its channels); [] when blocking does not apply."""
    if not is_default_form(func):
        return []
    found = rows_loop(s_tir.Schedule(func))
    if found is None:
        return []
    choices = [r for r in ROW_BLOCKS if found[2] % r == 0]
    return choices if len(choices) > 1 else []


def rows_space(kernel: str, fixed: int | None = None) -> Callable[[s_tir.Schedule], None]:
    """The schedule function of ``kernel``'s design space (for ``meta_schedule.space_generator.ScheduleFn``);
    ``fixed``: the decision taken instead of sampled (the trace of the default schedule's record)."""

    def space(sch: s_tir.Schedule) -> None:
        found = rows_loop(sch)
        if found is None:
            return
        choices = [r for r in ROW_BLOCKS if found[2] % r == 0]
        rows = sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices),
                                      decision=None if fixed is None else choices.index(fixed))
        block = _reduction(sch)
        sch.annotate(block, KERNEL_KEY, kernel)
        sch.annotate(block, ROWS_KEY, rows)
        split_rows(sch, found, rows)

    return space


def _reduction(sch: s_tir.Schedule) -> Any:
    return [b for b in sch.get_child_blocks(sch.get_sblock("root"))
            if any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)][0]


def candidate_choice(mod: Any) -> tuple[str, int] | None:
    """(kernel, rows) of a candidate scheduled by ``rows_space``: read from its reduction block's annotations."""
    found: list[tuple[str, int]] = []

    def on_block(block: Any) -> tvm_ffi.WalkResult:
        ann = block.annotations
        if KERNEL_KEY in ann and ROWS_KEY in ann:
            found.append((str(ann[KERNEL_KEY]), int(ann[ROWS_KEY])))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(mod["main"].body, [(s_tir.SBlock, on_block)], order="pre")
    return found[0] if found else None


def trace_rows(trace: Any) -> int | None:
    """The rows a tuning record's trace sampled (its SampleCategorical decision), None if it sampled none."""
    for inst in trace.insts:
        if inst.kind.name == "SampleCategorical":
            return int(inst.attrs[0][int(trace.decisions[inst])])
    return None


def fixed_trace(kernel: str, func: tirx.PrimFunc, rows: int) -> Any:
    """The trace of ``rows_space`` with the decision ``rows`` (a record of a schedule measured outside the search)."""
    sch = s_tir.Schedule(func)
    rows_space(kernel, rows)(sch)
    return sch.trace
