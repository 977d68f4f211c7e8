"""The description of a patch stage: the input tensor and an ordered chain of conv / residual-add / max-pool /
table-lookup layers.

A `Stage` is what the Relax pass extracts from a graph and what `build_stage` turns into one patch-based
PrimFunc. Values are numbered by the layer that produces them; `STAGE_INPUT` (-1) is the stage input.
Every layer reads the previous layer's output unless its `input` names another value; an `Add` also reads
`other`. The stage output is the last layer's output. Windowed layers (`Conv`, `MaxPool`) have a region map
(`Stage.window`); `Add` and `Lookup` are elementwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Union

import numpy as np

from tvm_patch.errors import TvmPatchError
from tvm_patch.geometry import RegionMap

STAGE_INPUT = -1
"""Value index of the stage input (for `Conv.input`, `Add.input`, `Add.other`)."""

Layout = Literal["NCHW", "NHWC"]
Activation = Literal["none", "relu", "relu6"]
_ACTIVATIONS = ("none", "relu", "relu6")
_DTYPES = ("float32", "int8")


class StageError(TvmPatchError):
    """A stage description that cannot be built (bad shape, layout, index, ...)."""


def _pair(v: int | tuple[int, ...], what: str) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise StageError(f"{what} must be an int or a pair, got {v}")
    return v  # type: ignore[return-value]


def _padding(v: int | tuple[int, ...]) -> tuple[int, int, int, int]:
    """Normalise padding to (top, left, bottom, right); an int or (vertical, horizontal) is symmetric."""
    if isinstance(v, (int, np.integer)):
        return (int(v),) * 4  # type: ignore[return-value]
    v = tuple(int(x) for x in v)
    if len(v) == 2:
        return v[0], v[1], v[0], v[1]
    if len(v) != 4:
        raise StageError(f"padding must be an int, a pair or (top, left, bottom, right), got {v}")
    return v  # type: ignore[return-value]


@dataclass(frozen=True, eq=False)
class ConvQuant:
    """int8 parameters of a conv (TFLite semantics).

    acc = sum((x - input_zero_point) * (w - weight_zero_point)) + bias (int32);
    y = clamp(MultiplyByQuantizedMultiplier(acc, multiplier[c], shift[c]) + output_zero_point,
    act_min, act_max) cast to int8. `shift` follows TFLite: > 0 shifts left, < 0 shifts right.
    The activation (relu / relu6) is folded into [act_min, act_max] as TFLite does
    (see `quantized_activation_range`); the layer's `activation` string is then informational.
    """

    input_zero_point: int
    output_zero_point: int
    multiplier: np.ndarray  # int32, one per output channel (or one for all)
    shift: np.ndarray  # int32, one per output channel (or one for all)
    weight_zero_point: int = 0
    act_min: int = -128
    act_max: int = 127

    def __post_init__(self) -> None:
        object.__setattr__(self, "multiplier", np.atleast_1d(np.asarray(self.multiplier, dtype="int32")))
        object.__setattr__(self, "shift", np.atleast_1d(np.asarray(self.shift, dtype="int32")))


@dataclass(frozen=True, eq=False)
class AddQuant:
    """int8 parameters of a residual add (TFLite ADD semantics, reference_ops::AddElementwise).

    Each input i (0: `Add.input`, 1: `Add.other`) is offset by -zero_point, shifted left by
    `left_shift`, rescaled by (multiplier, shift); the sum is rescaled by the output
    (multiplier, shift), offset by output_zero_point, clamped to [act_min, act_max], cast to int8.
    """

    input_zero_points: tuple[int, int]
    input_multipliers: tuple[int, int]
    input_shifts: tuple[int, int]
    output_zero_point: int
    output_multiplier: int
    output_shift: int
    left_shift: int = 20
    act_min: int = -128
    act_max: int = 127


@dataclass(frozen=True, eq=False)
class Conv:
    """A 2-D convolution (+ bias + activation).

    `weight` is in `kernel_layout`: default OIHW for an NCHW stage and HWIO for NHWC; a depthwise
    weight given as (kh, kw, C*mult, 1) in an NHWC stage (TFLite/TVM's HWOI) is recognised by shape.
    Any permutation of "OIHW" may be named explicitly. `groups` = 1 (dense), C_in (depthwise) or
    any divisor. `padding` is (top, left, bottom, right) in image pixels.
    """

    weight: np.ndarray
    bias: np.ndarray | None = None
    stride: tuple[int, int] | int = (1, 1)
    padding: tuple[int, int, int, int] | int = (0, 0, 0, 0)
    groups: int = 1
    activation: Activation = "none"
    kernel_layout: str | None = None
    input: int | None = None
    quant: ConvQuant | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "weight", np.asarray(self.weight))
        if self.bias is not None:
            object.__setattr__(self, "bias", np.asarray(self.bias))
        object.__setattr__(self, "stride", _pair(self.stride, "stride"))
        object.__setattr__(self, "padding", _padding(self.padding))
        object.__setattr__(self, "groups", int(self.groups))
        if self.activation not in _ACTIVATIONS:
            raise StageError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        if self.weight.ndim != 4:
            raise StageError(f"conv weight must be 4-D, got shape {self.weight.shape}")
        if min(self.stride) < 1 or min(self.padding) < 0 or self.groups < 1:
            raise StageError(f"bad conv stride {self.stride} / padding {self.padding} / groups {self.groups}")


@dataclass(frozen=True, eq=False)
class Add:
    """Residual add: output = activation(value[input] + value[other]); shapes must match."""

    other: int
    input: int | None = None
    activation: Activation = "none"
    quant: AddQuant | None = None

    def __post_init__(self) -> None:
        if self.activation not in _ACTIVATIONS:
            raise StageError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")


@dataclass(frozen=True, eq=False)
class MaxPool:
    """2-D max pooling (TFLite MAX_POOL_2D, ONNX MaxPool): each output is the max over the in-image positions
    of its window (the padding never wins: it is not a value), then the activation (float32: relu / relu6)
    or, in int8, the clamp [act_min, act_max] of TFLite's fused activation. No requantization (TFLite's int8
    max pool keeps the input's scale and zero point). `padding` is (top, left, bottom, right); every window
    must hold an image position, so each padding is smaller than the kernel."""

    kernel: tuple[int, int] | int
    stride: tuple[int, int] | int = (1, 1)
    padding: tuple[int, int, int, int] | int = (0, 0, 0, 0)
    activation: Activation = "none"
    input: int | None = None
    act_min: int = -128
    act_max: int = 127

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", _pair(self.kernel, "kernel"))
        object.__setattr__(self, "stride", _pair(self.stride, "stride"))
        object.__setattr__(self, "padding", _padding(self.padding))
        if self.activation not in _ACTIVATIONS:
            raise StageError(f"activation must be one of {_ACTIVATIONS}, got {self.activation!r}")
        kh, kw = self.kernel
        pt, pl, pb, pr = self.padding
        if min(self.kernel) < 1 or min(self.stride) < 1 or min(self.padding) < 0:
            raise StageError(f"bad max pool kernel {self.kernel} / stride {self.stride} / padding {self.padding}")
        if max(pt, pb) >= kh or max(pl, pr) >= kw:
            raise StageError(f"max pool padding {self.padding} reaches a whole {kh}x{kw} window: "
                             "a window must hold an image position")

    @property
    def region(self) -> RegionMap:
        """The pool's per-axis region map."""
        return RegionMap.of(self.kernel, self.stride, self.padding)


@dataclass(frozen=True, eq=False)
class Lookup:
    """An int8 elementwise function as a 256-entry table: output = table[input + 128] (LowerToInteger's
    `q_hard_swish` and `q_logistic`: TFLite's int8 HARD_SWISH and LOGISTIC, their fused clamp folded in).
    `kind` names the function, for messages."""

    table: np.ndarray
    input: int | None = None
    kind: str = "lookup"

    def __post_init__(self) -> None:
        object.__setattr__(self, "table", np.asarray(self.table))
        if self.table.shape != (256,) or self.table.dtype != np.int8:
            raise StageError(f"a lookup table must be 256 int8 values, got {self.table.dtype} {self.table.shape}")


Layer = Union[Conv, Add, MaxPool, Lookup]


@dataclass(frozen=True)
class ConvGeometry:
    """A conv's shape facts, resolved against the stage: channels, kernel, stride, padding, groups."""

    c_in: int
    c_out: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int, int, int]
    groups: int
    kernel_layout: str

    @property
    def region(self) -> RegionMap:
        """The conv's per-axis region map."""
        return RegionMap.of((self.kh, self.kw), self.stride, self.padding)

    @property
    def macs_per_output(self) -> int:
        """Multiply-accumulates per output element (one output channel at one pixel)."""
        return self.kh * self.kw * (self.c_in // self.groups)


@dataclass(frozen=True, eq=False)
class Stage:
    """A patch stage: input shape (in `layout`), dtype, and the ordered layers."""

    input_shape: tuple[int, int, int, int]
    layers: tuple[Layer, ...]
    layout: Layout = "NCHW"
    dtype: str = "float32"
    # derived, filled by __post_init__
    shapes: tuple[tuple[int, int, int], ...] = field(init=False, repr=False)  # (C, H, W) per layer
    inputs: tuple[tuple[int, ...], ...] = field(init=False, repr=False)  # value indices read per layer
    geometry: tuple[ConvGeometry | None, ...] = field(init=False, repr=False)  # convs' facts, None otherwise

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(d) for d in self.input_shape))
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.layout not in ("NCHW", "NHWC"):
            raise StageError(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.dtype not in _DTYPES:
            raise StageError(f"dtype must be one of {_DTYPES}, got {self.dtype!r}")
        if len(self.input_shape) != 4 or min(self.input_shape) < 1:
            raise StageError(f"input_shape must be 4 positive dims, got {self.input_shape}")
        if not self.layers:
            raise StageError("a stage needs at least one layer")
        shapes: list[tuple[int, int, int]] = []
        inputs: list[tuple[int, ...]] = []
        geometry: list[ConvGeometry | None] = []
        for i, layer in enumerate(self.layers):
            src = i - 1 if layer.input is None else layer.input
            srcs = (src, layer.other) if isinstance(layer, Add) else (src,)
            for s in srcs:
                if not STAGE_INPUT <= s < i:
                    raise StageError(f"layer {i} reads value {s}: must be -1 (stage input) or an earlier layer")
            c, h, w = self.value_shape(src, shapes)
            if isinstance(layer, Conv):
                g = self._conv_geometry(i, layer, c)
                ho, wo = g.region.h.output_size(h), g.region.w.output_size(w)
                if ho < 1 or wo < 1:
                    raise StageError(f"layer {i}: kernel {g.kh}x{g.kw} larger than padded input {h}x{w}")
                shapes.append((g.c_out, ho, wo))
                geometry.append(g)
                self._check_conv_quant(i, layer, g)
            elif isinstance(layer, Add):
                other = self.value_shape(layer.other, shapes)
                if other != (c, h, w):
                    raise StageError(f"layer {i}: add of shapes {(c, h, w)} and {other} (CHW) differ")
                if (self.dtype == "int8") != (layer.quant is not None):
                    raise StageError(f"layer {i}: an add needs AddQuant exactly when the stage is int8")
                shapes.append((c, h, w))
                geometry.append(None)
            elif isinstance(layer, MaxPool):
                r = layer.region
                ho, wo = r.h.output_size(h), r.w.output_size(w)
                if ho < 1 or wo < 1:
                    raise StageError(f"layer {i}: pool window {layer.kernel} larger than padded input {h}x{w}")
                if self.dtype == "float32" and (layer.act_min, layer.act_max) != (-128, 127):
                    raise StageError(f"layer {i}: an int8 clamp on a float32 max pool")
                shapes.append((c, ho, wo))
                geometry.append(None)
            elif isinstance(layer, Lookup):
                if self.dtype != "int8":
                    raise StageError(f"layer {i}: a table lookup ({layer.kind}) needs an int8 stage")
                shapes.append((c, h, w))
                geometry.append(None)
            else:
                raise StageError(f"layer {i}: unknown layer type {type(layer).__name__}")
            inputs.append(srcs)
        if self.dtype == "int8":
            for v in range(STAGE_INPUT, len(self.layers)):
                zps = {self.layers[i].quant.input_zero_point for i, srcs in enumerate(inputs)
                       if v in srcs and isinstance(self.layers[i], Conv)}
                if len(zps) > 1:  # the zero ring of v must be one value
                    raise StageError(f"value {v} is read by convs with different input zero points {sorted(zps)}")
        used = {s for srcs in inputs for s in srcs}
        for i in range(len(self.layers) - 1):
            if i not in used:
                raise StageError(f"layer {i}'s output is never used (only the last layer may be unread)")
        object.__setattr__(self, "shapes", tuple(shapes))
        object.__setattr__(self, "inputs", tuple(inputs))
        object.__setattr__(self, "geometry", tuple(geometry))

    # -- helpers ---------------------------------------------------------------------------------

    @property
    def input_chw(self) -> tuple[int, int, int]:
        """The stage input as (C, H, W)."""
        n, a, b, c = self.input_shape
        return (a, b, c) if self.layout == "NCHW" else (c, a, b)

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    def value_shape(self, v: int, shapes: list | tuple | None = None) -> tuple[int, int, int]:
        """(C, H, W) of value `v` (STAGE_INPUT or a layer index)."""
        if v == STAGE_INPUT:
            return self.input_chw
        return (self.shapes if shapes is None else shapes)[v]

    def nd_shape(self, v: int) -> tuple[int, int, int, int]:
        """The 4-D shape of value `v` in the stage layout."""
        c, h, w = self.value_shape(v)
        return (self.batch, c, h, w) if self.layout == "NCHW" else (self.batch, h, w, c)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.nd_shape(len(self.layers) - 1)

    def window(self, i: int) -> RegionMap:
        """Layer i's region map: a conv's or pool's window, the identity for elementwise layers."""
        layer = self.layers[i]
        if isinstance(layer, Conv):
            return self.geometry[i].region
        if isinstance(layer, MaxPool):
            return layer.region
        return RegionMap()

    def consumers(self, v: int) -> list[int]:
        """Indices of the layers that read value `v`."""
        return [i for i, srcs in enumerate(self.inputs) if v in srcs]

    def _conv_geometry(self, i: int, conv: Conv, c_in: int) -> ConvGeometry:
        shape = conv.weight.shape
        kl = conv.kernel_layout
        if kl is None:
            if self.layout == "NCHW":
                kl = "OIHW"
            else:
                kl = "HWIO"
                # TFLite/TVM depthwise: (kh, kw, C*mult, 1) = HWOI
                if conv.groups > 1 and shape[3] == 1 and shape[2] % conv.groups == 0 and shape[2] != 1:
                    kl = "HWOI"
        if sorted(kl) != sorted("OIHW"):
            raise StageError(f"layer {i}: kernel_layout {kl!r} is not a permutation of OIHW")
        dims = dict(zip(kl, shape))
        g = conv.groups
        if c_in % g or dims["O"] % g or dims["I"] * g != c_in:
            raise StageError(
                f"layer {i}: weight {shape} ({kl}) with groups={g} does not fit {c_in} input channels"
            )
        if conv.bias is not None and conv.bias.shape != (dims["O"],):
            raise StageError(f"layer {i}: bias shape {conv.bias.shape} != ({dims['O']},)")
        return ConvGeometry(c_in, dims["O"], dims["H"], dims["W"], conv.stride, conv.padding, g, kl)

    def _check_conv_quant(self, i: int, conv: Conv, g: ConvGeometry) -> None:
        if self.dtype == "float32":
            if conv.quant is not None:
                raise StageError(f"layer {i}: ConvQuant given in a float32 stage")
            return
        q = conv.quant
        if q is None:
            raise StageError(f"layer {i}: an int8 conv needs ConvQuant")
        for name in ("multiplier", "shift"):
            if getattr(q, name).shape[0] not in (1, g.c_out):
                raise StageError(f"layer {i}: quant.{name} must have 1 or {g.c_out} entries")
        if conv.weight.dtype != np.int8:
            raise StageError(f"layer {i}: an int8 conv needs an int8 weight, got {conv.weight.dtype}")
