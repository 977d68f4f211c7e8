"""The tuning space of one exported kernel, as a meta_schedule design space (TVM 0.27 has none for a "c"
target: meta_schedule raises "Unsupported kind").

The knobs, each a ``sch.sample_categorical`` decision of the space:

- ``rows``: the micro-kernels' register blocking over output channels (export/blocking.py), among the blockings
  that divide the kernel's channels; the blocking's own schedule steps (``split_rows``) run with the sampled
  factor, so the cost model sees the candidate's real loop nest.
- ``packed``: whether the kernel's per-channel constants (bias, multiplier, shift) are packed into one
  interleaved array (export/packed_constants.py, the export's default) or stay three arrays. Register allocation
  moves both ways: measured per kernel, some are faster unpacked (docs/tuning.md).
- ``unrolled``: whether GCC's loop unroller (``-funroll-loops``, as a function attribute: codegen/c_kernels.py)
  compiles the kernel. Measured, it takes 10 % off some 1x1 kernels and adds up to 2 % to some depthwise ones, and
  its code grows (Flash): a choice per kernel. Every kernel has this knob.
- ``outlined`` (patch stages only): which of the stage's layer nests are moved into ``noinline`` functions of their
  own (codegen/outline.py), one ``sample_categorical`` per nest. Measured on mcunet-in0's 3x3 cache stage: the last
  1x1 layer's nest -50,000 instructions outlined, the first depthwise layer's +46,000 (docs/tuning.md).
- ``peeled`` (patch stages only): whether the stage's patch loops are peeled, the first, interior and last
  patches of each axis as copies of their own (codegen/peel_patches.py): the halo copies and fills get constant
  lengths. With every layer nest outlined, peeling the rest took 1.4-3.4 % off three networks (docs/tuning.md).
- ``paired_down`` (patch stages with such columns only): whether the stage's pair convs compute their odd last
  columns in pairs down them or each row's last pixel alone (patch/stage_forms.py: both forms are in the stage's
  TIR, the export keeps one). Measured on mcunet-in0, M7: -0.3 % untuned in cache mode, +2.3 % untuned in recompute
  mode through GCC, -0.4 % with the stage tuned (docs/kernels.md, session 36).

The kernel's block carries the kernel's name and the choices as annotations: the builder rebuilds the candidate
with the export's own functions (``block_output_channels``, ``pack_channel_constants``), so what is measured is
exactly what ``tvm-patch build --tuning-db`` will emit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import tvm_ffi
from tvm import s_tir, tirx

from tvm_patch.export.blocking import DEFAULT_ROWS, ROW_BLOCKS, rows_loop, split_rows
from tvm_patch.export.schedule import is_default_form

__all__ = ["DOWN_KEY", "KERNEL_KEY", "OUTLINE_KEY", "PACK_KEY", "PEEL_KEY", "ROWS_KEY", "UNROLL_KEY", "Choice",
           "candidate_choice", "fixed_trace", "kernel_space", "row_choices", "trace_choice"]

KERNEL_KEY = "tvm_patch.kernel"
ROWS_KEY = "tvm_patch.rows"
PACK_KEY = "tvm_patch.packed"
PACK_CHOICES = (1, 0)  # packed (the export's default), three arrays
UNROLL_KEY = "tvm_patch.unrolled"
UNROLL_CHOICES = (0, 1)  # the project's flags (the export's default), GCC's unroller on
OUTLINE_KEY = "tvm_patch.outlined"  # one annotation per layer nest: OUTLINE_KEY + ".<nest>"
OUTLINE_CHOICES = (0, 1)  # inline in the stage (the export's default), its own function
PEEL_KEY = "tvm_patch.peeled"
PEEL_CHOICES = (0, 1)  # one patch loop (the export's default), peeled
DOWN_KEY = "tvm_patch.paired_down"  # sampled from (the stage's default, the other), annotated as 1 (down) or 0


@dataclass(frozen=True)
class Choice:
    """One point of a kernel's space: its blocking, whether its per-channel constants are packed, whether GCC
    unrolls its loops, which layer nests of a patch stage are outlined, whether its patch loops are peeled and
    whether its odd last columns are paired down (a knob a kernel does not have: the export's default,
    DEFAULT_ROWS, packed, not unrolled, none outlined, not peeled, the stage's own form: None)."""

    rows: int = DEFAULT_ROWS
    packed: bool = True
    unrolled: bool = False
    outlined: tuple[int, ...] = ()
    peeled: bool = False
    paired_down: bool | None = None


def row_choices(func: tirx.PrimFunc) -> list[int]:
    """The blockings a kernel can take (those dividing its channels); [] when blocking does not apply."""
    if not is_default_form(func):
        return []
    found = rows_loop(s_tir.Schedule(func))
    if found is None:
        return []
    choices = [r for r in ROW_BLOCKS if found[2] % r == 0]
    return choices if len(choices) > 1 else []


def kernel_space(kernel: str, rows_knob: bool, pack_knob: bool,
                 fixed: Choice | None = None, nests: int = 0,
                 down_default: bool | None = None) -> Callable[[s_tir.Schedule], None]:
    """The schedule function of ``kernel``'s design space (for ``meta_schedule.space_generator.ScheduleFn``) with
    the knobs that apply to it (the unrolling always; ``nests``: a patch stage's layer nests, each outlined or
    not, and its patch loops peeled or not; ``down_default``: a stage's odd-column form's default, None for a
    kernel without the choice, ``stage_forms.form_default``); ``fixed``: the decisions taken instead of sampled
    (the default schedule's record)."""

    def space(sch: s_tir.Schedule) -> None:
        block = _main_block(sch)
        sch.annotate(block, KERNEL_KEY, kernel)
        found = rows_loop(sch) if rows_knob else None
        if found is not None:
            choices = [r for r in ROW_BLOCKS if found[2] % r == 0]
            rows = sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices),
                                          decision=None if fixed is None else choices.index(fixed.rows))
            sch.annotate(block, ROWS_KEY, rows)
        if pack_knob:
            packed = sch.sample_categorical(list(PACK_CHOICES), [0.5, 0.5],
                                            decision=None if fixed is None else PACK_CHOICES.index(int(fixed.packed)))
            sch.annotate(block, PACK_KEY, packed)
        unrolled = sch.sample_categorical(list(UNROLL_CHOICES), [0.5, 0.5],
                                          decision=None if fixed is None else UNROLL_CHOICES.index(int(fixed.unrolled)))
        sch.annotate(block, UNROLL_KEY, unrolled)
        for n in range(nests):
            out = sch.sample_categorical(list(OUTLINE_CHOICES), [0.5, 0.5],
                                         decision=None if fixed is None else int(n in fixed.outlined))
            sch.annotate(block, f"{OUTLINE_KEY}.{n}", out)
        if nests:
            peeled = sch.sample_categorical(list(PEEL_CHOICES), [0.5, 0.5],
                                            decision=None if fixed is None else PEEL_CHOICES.index(int(fixed.peeled)))
            sch.annotate(block, PEEL_KEY, peeled)
        if down_default is not None:
            forms = [int(down_default), int(not down_default)]
            down = sch.sample_categorical(forms, [0.5, 0.5], decision=None if fixed is None else int(
                fixed.paired_down is not None and fixed.paired_down != down_default))
            sch.annotate(block, DOWN_KEY, down)
        if found is not None:
            split_rows(sch, found, rows)

    return space


def _main_block(sch: s_tir.Schedule) -> Any:
    """The kernel's reduction block (its first block when it has none; the root block of a kernel written as a
    plain loop nest, as a patch stage is)."""
    root = sch.get_sblock("root")
    blocks = list(sch.get_child_blocks(root))
    reductions = [b for b in blocks if any(int(iv.iter_type) == tirx.IterVar.CommReduce for iv in sch.get(b).iter_vars)]
    return (reductions or blocks or [root])[0]


def candidate_choice(mod: Any) -> tuple[str, Choice] | None:
    """(kernel, choice) of a candidate scheduled by ``kernel_space``, read from its block's annotations (a knob the
    kernel does not have takes the export's default)."""
    found: list[tuple[str, Choice]] = []

    def on_block(block: Any) -> tvm_ffi.WalkResult:
        ann = block.annotations
        if KERNEL_KEY in ann:
            found.append((str(ann[KERNEL_KEY]), _choice({str(k): int(v) for k, v in ann.items()
                                                         if str(k).startswith("tvm_patch.") and str(k) != KERNEL_KEY})))
        return tvm_ffi.WalkResult.ADVANCE

    tvm_ffi.structural_walk(mod["main"].body, [(s_tir.SBlock, on_block)], order="pre")
    return found[0] if found else None


def trace_choice(trace: Any) -> Choice | None:
    """The choice a tuning record's trace made: each knob's sampled value, found through the annotation that
    names it; None when the trace annotates no knob. A knob the trace does not sample takes its default (records
    of sessions before the packing knob read as packed, before the unrolling knob as not unrolled)."""
    sampled: dict[Any, int] = {}
    knobs: dict[str, int] = {}
    for inst in trace.insts:
        if inst.kind.name == "SampleCategorical":
            sampled[inst.outputs[0]] = int(inst.attrs[0][int(trace.decisions[inst])])
        elif inst.kind.name == "Annotate" and len(inst.inputs) > 1 and inst.inputs[1] in sampled:
            knobs[str(inst.attrs[0])] = sampled[inst.inputs[1]]
    return _choice(knobs) if knobs else None


def _choice(knobs: dict[str, int]) -> Choice:
    """The Choice of a candidate's knob annotations (key -> value); a knob absent takes the export's default."""
    outlined = tuple(sorted(int(k[len(OUTLINE_KEY) + 1:]) for k, v in knobs.items()
                            if k.startswith(OUTLINE_KEY + ".") and v))
    return Choice(knobs.get(ROWS_KEY, DEFAULT_ROWS), bool(knobs.get(PACK_KEY, 1)), bool(knobs.get(UNROLL_KEY, 0)),
                  outlined, bool(knobs.get(PEEL_KEY, 0)), bool(knobs[DOWN_KEY]) if DOWN_KEY in knobs else None)


def fixed_trace(kernel: str, func: tirx.PrimFunc, choice: Choice, rows_knob: bool, pack_knob: bool,
                nests: int = 0, down_default: bool | None = None) -> Any:
    """The trace of ``kernel_space`` with the decisions of ``choice`` (a record of a schedule measured outside the
    search)."""
    sch = s_tir.Schedule(func)
    kernel_space(kernel, rows_knob, pack_knob, choice, nests, down_default)(sch)
    return sch.trace
