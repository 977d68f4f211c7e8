"""What the emitters of the patch stage's written nest share (`cache_stage`, `element_values`, `blocked_convs`): the
stage and its patch plan, the nest's buffers and per-layer facts, the patch loop's variables, and the addressing of
a value's elements in its per-patch region buffer (or in the skip's buffer that holds it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from tvm import tirx

from tvm_patch.codegen.workspace import PIXEL_NAME
from tvm_patch.patch.block_plan import pairs_down, window_bytes, window_stride
from tvm_patch.patch.loops import I32, imm, loops
from tvm_patch.patch.regions import PatchPlan, acc_dtype
from tvm_patch.patch.stage_forms import DOWN_WINDOW
from tvm_patch.patch.stage import Stage

__all__ = ["NestContext", "Scratch", "declare_scratch", "in_layout"]


def in_layout(stage: Stage, c: Any, h: Any, w: Any) -> tuple:
    """(channel, row, column) in the stage's layout's order: a region buffer's shape or an element's index."""
    return (c, h, w) if stage.layout == "NCHW" else (h, w, c)


@dataclass
class Scratch:
    """The nest's C locals (the root block's buffers): accumulators, temporaries and copied windows."""

    acc: Any  # one element's accumulator
    tmp: list  # three int32 temporaries: a requantization's result, an add's rescaled operands and sum
    fval: Any  # a fused projection's value, read by its add
    accb: Any  # `acc_rows`: a register block's R x 2 accumulators
    fvals: list  # `fused_rows0/1`: a blocked add's convs' values
    pix: Any  # `pixel`: one or two output pixels' copied input windows
    pair_win: dict  # 1x1 conv with pixel pairs -> its own window buffer (`pixel_pair{v}`)
    down_win: Any = None  # `pixel_down`: a pair down an odd last column's windows (`block_plan.pairs_down`)

    def buffers(self, fused_adds: dict[int, list[int]]) -> list:
        """The root block's buffers in order: the `fused_rows*` only as many as an add has fused convs."""
        return [self.acc, *self.tmp, self.fval, self.accb, self.pix, *self.pair_win.values(),
                *self.fvals[:max(map(len, fused_adds.values()), default=0)],
                *([self.down_win] if self.down_win is not None else [])]


def declare_scratch(stage: Stage, blocked: dict[int, int], pairs: set[int]) -> Scratch:
    """The C locals for the stage's blocks (`blocked`, `pairs`: `block_plan.blocking`)."""
    dt = stage.dtype
    acc = tirx.decl_buffer((1,), acc_dtype(stage), name="acc")
    tmp = [tirx.decl_buffer((1,), I32, name=f"tmp{k}") for k in range(3)]
    fval = tirx.decl_buffer((1,), dt, name="fused")
    accb = tirx.decl_buffer((2 * max(blocked.values(), default=1),), acc_dtype(stage), name="acc_rows")
    fvals = [tirx.decl_buffer((2 * max(blocked.values(), default=1),), dt, name=f"fused_rows{k}") for k in range(2)]
    # a 1x1 conv's pixel pair along a row gets its own window buffer, read by nothing but its widening, which then
    # reads the channel planes instead (codegen/widen_kernels: the copy goes); other windows share `pix`; the pairs
    # down an odd last column (`block_plan.pairs_down`: their pixels a row apart, copied) have theirs, scratch of
    # that form only (`stage_forms.DOWN_WINDOW`, dropped with the form)
    pair_win = {v: tirx.decl_buffer((2 * window_bytes(stage, v),), dt, name=f"{PIXEL_NAME}_pair{v}")
                for v in pairs if window_bytes(stage, v) and stage.geometry[v].kh * stage.geometry[v].kw == 1}
    pix_len = max([(2 if v in pairs and v not in pair_win else 1) * window_stride(stage, v) for v in blocked],
                  default=0)
    pix = tirx.decl_buffer((max(pix_len, 1),), dt, name=PIXEL_NAME)
    down_len = max([2 * window_stride(stage, v) for v in pairs if pairs_down(stage, blocked, v)], default=0)
    down_win = tirx.decl_buffer((down_len,), dt, name=DOWN_WINDOW) if down_len else None
    return Scratch(acc, tmp, fval, accb, fvals, pix, pair_win, down_win)


@dataclass
class NestContext:
    """The written nest of one stage over its patches: buffers, per-layer facts and the patch loop's variables."""

    stage: Stage
    plan: PatchPlan
    inp: Any  # the stage's input (batch axis first)
    params: dict[str, Any]  # `te_stage.param_names` -> buffer
    out: Any  # the stage's output (batch axis first)
    region: dict[int, Any]  # value -> per-patch buffer (C, rows, cols) in the layout, no batch axis
    rows_c: dict[int, Any]  # value -> row cache (its bottom halo over the image's columns)
    cols_c: dict[int, Any]  # value -> column cache (its right halo)
    chan: dict[int, Any]  # in-place depthwise layer -> the one-channel copy of its input's (or output's) region
    home: dict[int, tuple[int, int, int]]  # value -> (the value whose buffer holds it, row and column offset)
    fused: dict  # conv -> (its residual add, ...): computed inside the add (`skip_accumulations`)
    fused_adds: dict[int, list[int]]  # residual add -> its fused convs, computed register blocked inside it
    dw: set[int]  # in-place depthwise layers computed channel by channel through `chan`
    top_left: set[int]  # in-place depthwise layers written over their input's region at its top-left corner
    over: set[int]  # layers whose own buffer is written over their input's (`cache_plan.over_input`)
    out_copy: set[int]  # in-place depthwise layers computed into `chan`, then copied over their input
    blocked: dict[int, int]  # layer -> its channels a register block (`block_plan.blocking`)
    pairs: set[int]  # layers computed two output pixels at a time
    scratch: Scratch
    n: Any  # the batch loop's variable
    pi: Any  # the patch row's
    pj: Any  # the patch column's
    patch_ana: Any  # an Analyzer knowing pi's and pj's ranges
    down: Any  # the stage's `stage_forms.PAIRS_DOWN` flag: odd last columns in pairs down them, or each row's alone
    down_default: bool  # the flag's default (`stage_forms.pairs_down_default`)

    @property
    def last(self) -> int:
        """The stage's last layer (written to the output, not to a region buffer)."""
        return len(self.stage.layers) - 1

    @property
    def nchw(self) -> bool:
        """Whether the stage's layout is NCHW (else NHWC)."""
        return self.stage.layout == "NCHW"

    def nd(self, c: Any, h: Any, w: Any) -> tuple:
        """(channel, row, column) in the layout's order."""
        return in_layout(self.stage, c, h, w)

    def lo(self, v: int, axis: int) -> Any:
        """Image row (axis 0) / column (1) where patch (i, j)'s region of v starts: affine in the patch index."""
        ax = self.plan.h[v] if axis == 0 else self.plan.w[v]
        p = self.pi if axis == 0 else self.pj
        step = ax.regions[1].lo - ax.regions[0].lo if len(ax.regions) > 1 else 0
        return p * imm(step) + imm(ax.regions[0].lo)

    def at(self, buf: Any, c: Any, y: Any, x: Any, batch: Any = None) -> Any:
        """Element (c, y, x) of `buf`, its index simplified over the patch index's range."""
        idx = [self.patch_ana.simplify(e) for e in self.nd(c, y, x)]
        return tirx.BufferLoad(buf, ([batch] if batch is not None else []) + idx)

    def store(self, buf: Any, value: Any, c: Any, y: Any, x: Any, batch: Any = None) -> Any:
        """`value` stored at (c, y, x) of `buf`, its index simplified as in `at`."""
        idx = [self.patch_ana.simplify(e) for e in self.nd(c, y, x)]
        return tirx.BufferStore(buf, value, ([batch] if batch is not None else []) + idx)

    def reg_at(self, v: int, c: Any, r: Any, q: Any) -> Any:
        """Element (c, r, q) of value v's region (r, q: rows and columns from the region's start), in its own
        buffer or in the skip's that holds it (`home`, at a constant offset)."""
        h, dh, dw_ = self.home.get(v, (v, 0, 0))
        return self.at(self.region[h], c, r + imm(dh), q + imm(dw_))

    def reg_store(self, v: int, value: Any, c: Any, r: Any, q: Any) -> Any:
        """`value` stored at element (c, r, q) of value v's region, as `reg_at` reads it."""
        h, dh, dw_ = self.home.get(v, (v, 0, 0))
        return self.store(self.region[h], value, c, r + imm(dh), q + imm(dw_))

    def read(self, v: int, c: Any, y: Any, x: Any) -> Any:
        """Value v at image position (y, x) (inside patch (i, j)'s region of v)."""
        return self.reg_at(v, c, y - self.lo(v, 0), x - self.lo(v, 1))

    def from_chan(self, v: int) -> Callable[[int, Any, Any, Any], Any]:
        """A reader of v's input at image positions from the one-channel copy `chan[v]`."""
        u = self.stage.inputs[v][0]
        return lambda _v, _c, y, x: self.at(self.chan[v], imm(0), y - self.lo(u, 0), x - self.lo(u, 1))

    def chw_loops(self, c: tuple, rows: tuple, cols: tuple, fn: Callable[[Any, Any, Any], Any]) -> Any:
        """Loops over (channel, row, col) given as (min, extent) pairs, nested in the layout's order."""
        if self.nchw:
            return loops([c, rows, cols], fn)
        return loops([rows, cols, c], lambda r, q, ch: fn(ch, r, q))
