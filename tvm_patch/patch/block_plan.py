"""Which layers of a patch stage's written nest are register blocked, and how: accumulator rows per layer, two
output pixels at a time or one, residual adds that compute their convs inside them, and the layout of a pixel's
input window copied into the C local `pixel`. Facts only; `blocked_convs` emits the nests."""

from __future__ import annotations

from typing import Any

from tvm import tirx

from tvm_patch.codegen.micro_kernels import MIN_DOT_LENGTH
from tvm_patch.codegen.workspace import LOCAL_MAX_BYTES, PIXEL_MAX_BYTES
from tvm_patch.patch.loops import imm
from tvm_patch.patch.regions import accumulator_rows
from tvm_patch.patch.stage import Stage

__all__ = ["DOWN_MIN_BLOCKS", "blocked_adds", "blocking", "depthwise", "pairs_down", "pixel_pairs", "window_bytes",
           "window_pos", "window_stride", "window_tap"]

# an odd last column in pairs down it only for a 1x1 conv of this many channel blocks or more: such a pair copies its
# two pixels (a row apart) before the widening, which the blocks must pay back (mcunet-in0's 2x2 cache stage,
# session 36, all its pair layers paired down: its 16 -> 64 layer, 32 blocks, -7,972 instructions; its 24 -> 16
# layer, 8 blocks, +2,750; its 3x3 stem, 8 blocks, +3,686)
DOWN_MIN_BLOCKS = 16


def depthwise(stage: Stage, v: int) -> bool:
    """Whether layer v is a depthwise conv (one input channel per output channel)."""
    g = stage.geometry[v]
    return g is not None and g.groups > 1 and g.groups == g.c_in


def pixel_pairs(stage: Stage, v: int) -> bool:
    """Whether dense conv v is computed two output pixels at a time (`tvmp_dot_s8_px2_rows*`, as the per-layer
    path's `blocking.block_pixels`): a blocked conv of an int8 stage, 1x1 or k x k (NHWC: per kernel row, its
    columns x channels one contiguous run; NCHW: when the two pixels' windows copied stay a C local, up to
    `PIXEL_MAX_BYTES`: mcunet-in0's last 1x1 over 64 channels since round 15), 2 channels a
    block (the per-layer measurement: at 2x4 GCC spills). k x k too since this round: vww's 3x3 stem 4x4
    recompute 3.31 M -> about 2.7 M instructions."""
    g = stage.geometry[v]
    if stage.dtype != "int8" or accumulator_rows(stage, v) == 1 or g.c_in * g.kh * g.kw < MIN_DOT_LENGTH:
        return False  # (a reduction shorter than a dot call: nothing to share; TVM's buffer compaction divided by
    return stage.layout == "NHWC" or 0 < 2 * window_bytes(stage, v) <= PIXEL_MAX_BYTES  # zero on such pair loops)


def pairs_down(stage: Stage, blocked: dict[int, int], v: int) -> bool:
    """Whether pair conv v (`pixel_pairs`) can compute the odd last column of its rows in pairs down the column
    (`blocked_convs.blocked_pixels`; a stage's choice, `stage_forms`) rather than pixel by pixel: an NHWC 1x1 conv
    (its dot reads the two pixels where they are, a row apart), an NCHW 1x1 conv of at least `DOWN_MIN_BLOCKS` blocks
    of `blocked[v]` channels (its pair's two pixels are copied first)."""
    g = stage.geometry[v]
    if g is None or g.kh * g.kw != 1:
        return False
    if stage.layout == "NHWC":
        return True
    return window_bytes(stage, v) > 0 and g.c_out // blocked[v] >= DOWN_MIN_BLOCKS


def blocked_adds(stage: Stage, fused: dict[int, tuple[int, int | None]]) -> dict[int, list[int]]:
    """Residual add -> its fused convs (`skip_accumulations`), where they are computed register blocked inside it
    (`blocked_convs.add_block`): every one blocked (`accumulator_rows`), and reading its input in place or the
    add's only conv (its window copied into `pixel`, which two convs of one add would share: an inverted residual
    block's 1x1 projection in NCHW). Others element by element."""
    adds: dict[int, list[int]] = {}
    for u, (add, _) in sorted(fused.items()):
        adds.setdefault(add, []).append(u)
    return {a: us for a, us in adds.items()
            if all(accumulator_rows(stage, u) > 1 and (len(us) == 1 or not window_bytes(stage, u)) for u in us)}


def blocking(stage: Stage, dw: set[int], fused: dict, fused_adds: dict[int, list[int]]) -> tuple[dict[int, int],
                                                                                                    set[int]]:
    """(layer -> its channels a block, the layers computed two pixels at a time) of the written nest: the layers
    with more than one accumulator row but the in-place depthwise ones and the fused convs computed element by
    element; a blocked add takes its convs' blocks, and its pixel pairs only where all of them pair."""
    last = len(stage.layers) - 1
    in_adds = {u for convs in fused_adds.values() for u in convs}
    blocked = {v: accumulator_rows(stage, v) for v in range(last + 1)
               if v not in dw and (v not in fused or v in in_adds) and accumulator_rows(stage, v) > 1}
    pairs = {v for v in blocked if pixel_pairs(stage, v)}
    blocked |= {v: 2 for v in pairs}  # 2 pixels x 2 channels (see pixel_pairs)
    for v, convs in fused_adds.items():  # the add's pixels and channel blocks: its convs' (all alike)
        blocked[v] = blocked[convs[0]]
        if all(u in pairs for u in convs):
            pairs.add(v)
        else:
            pairs -= set(convs)
            blocked |= {u: accumulator_rows(stage, u) for u in convs}
            blocked[v] = blocked[convs[0]]
    return blocked, pairs


def window_stride(stage: Stage, v: int) -> int:
    """Elements from one pixel's copied window to the next in `pixel`: an int8 k x k window's taps padded to a
    multiple of four (codegen/pad_rows.py then pads the weight rows with zeros: every row whole words for the
    micro-kernels, the stem's 27 taps 28), others their taps (0: no window copied)."""
    g, n = stage.geometry[v], window_bytes(stage, v)
    if n and stage.dtype == "int8" and g.kh * g.kw > 1:
        return (n + 3) // 4 * 4
    return n // 4 if stage.dtype == "float32" else n


def window_pos(stage: Stage, v: int, c: Any, ry: Any, rx: Any) -> Any:
    """Tap (c, ry, rx)'s place in conv v's copied window: the weights' order, I, H, W (NCHW) or H, W, I (NHWC)."""
    g = stage.geometry[v]
    if stage.layout == "NCHW":
        return c * imm(g.kh * g.kw) + ry * imm(g.kw) + rx
    return (ry * imm(g.kw) + rx) * imm(g.c_in) + c


def window_tap(stage: Stage, v: int, f: Any) -> tuple[Any, Any, Any]:
    """(c, ry, rx) of the window's element f: `window_pos` inverted."""
    g = stage.geometry[v]
    if stage.layout == "NCHW":
        return (tirx.floordiv(f, imm(g.kh * g.kw)), tirx.floormod(tirx.floordiv(f, imm(g.kw)), imm(g.kh)),
                tirx.floormod(f, imm(g.kw)))
    return (tirx.floormod(f, imm(g.c_in)), tirx.floordiv(f, imm(g.kw * g.c_in)),
            tirx.floormod(tirx.floordiv(f, imm(g.c_in)), imm(g.kw)))


def window_bytes(stage: Stage, v: int) -> int:
    """Bytes of one output pixel's input window that blocked dense conv v copies into a C local (its reduction then
    runs over contiguous bytes, in the weights' order), or 0. NCHW: up to `LOCAL_MAX_BYTES` (an int8 1x1 conv's
    pixel up to `PIXEL_MAX_BYTES`). NHWC, where a pixel's
    channels are contiguous already: only a k x k int8 conv whose kernel rows are not whole words (a stem over 3
    channels: its rows of 9 bytes, scalar tails in every dot call, against one padded run of 28; vww's 3x3 stem,
    round 19) or of at most one word (kws's 10x4 stem over one channel: ten 4-byte dot calls against one of 40;
    round 20), up to `LOCAL_MAX_BYTES`."""
    g = stage.geometry[v]
    if g is None or accumulator_rows(stage, v) == 1:
        return 0
    if stage.layout != "NCHW" and (stage.dtype != "int8" or g.kh * g.kw == 1
                                     or (g.kw * g.c_in % 4 == 0 and g.kw * g.c_in > 4)):
        return 0
    size = g.c_in * g.kh * g.kw * (4 if stage.dtype == "float32" else 1)
    # an int8 NCHW 1x1 conv's pixel (its channels, gathered from their planes) up to a pixel window's own bound:
    # read in place, its reduction would be scalar MACs a plane apart (mcunet-in2's inverted residual projections
    # over 96-144 channels, computed inside their adds, session 41)
    one_by_one = stage.layout == "NCHW" and stage.dtype == "int8" and g.kh * g.kw == 1
    return size if size <= (PIXEL_MAX_BYTES if one_by_one else LOCAL_MAX_BYTES) else 0
