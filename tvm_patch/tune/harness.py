"""One kernel of an exported network as an export directory of its own: the harness a candidate is
measured with.

``kernel_program`` cuts the kernel's first call out of the network's program (its activation operands
become the harness's inputs and outputs, its weights stay the network's); ``network_rewrite`` finds which
of the export's rewrites after the lean schedule (in place, pixel copy in a C local or in the arena, none)
the network's export gave the kernel, so the harness applies the same one to every candidate;
``write_kernel_export`` then plans the harness's arena, emits the C kernel, driver and host program, and
writes a directory that ``microtvm_projects`` turns into a board project like any export: seeded inputs,
the host build's outputs as the expected ones, firmware, QEMU.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import tvm_ffi
from tvm import tirx

from tvm_patch.codegen import C_TARGET
from tvm_patch.codegen.c_kernels import lower_plain, mark_in_place
from tvm_patch.codegen.outline import layer_nests
from tvm_patch.codegen.weight_sums import SUMS_ATTR
from tvm_patch.codegen.wide_weights import WIDEN_ATTR
from tvm_patch.export.api import emit_kernels, packed_constants, write_directory
from tvm_patch.export.blocking import DEFAULT_ROWS, block_output_channels, block_pixels
from tvm_patch.export.dead_channels import quiet_dead_channels
from tvm_patch.export.driver import driver_source, model_header
from tvm_patch.export.host import host_main, makefile
from tvm_patch.export.inplace import inplace_pairs
from tvm_patch.export.inplace_conv import (channel_outer_schedule, inplace_conv_pairs, inplace_conv_schedule,
                                          pixel_copy_schedule, pixel_pair_copy_schedule)
from tvm_patch.export.lower import Arg, IOTensor, KernelCall, Program, TensorInfo
from tvm_patch.export.odd_planes import block_pairs_nchw, overlap_odd_row
from tvm_patch.export.padded_copy import padded_copy_schedule
from tvm_patch.export.plan import plan_arena
from tvm_patch.export.schedule import lean_schedule
from tvm_patch.export.window_copy import window_copy_schedule
from tvm_patch.export.wide_weights import weights_key
from tvm_patch.patch.stage_forms import form_default, with_form
from tvm_patch.names import ALIASED_PARAMS
from tvm_patch.tir_util import is_patch_stage
from tvm_patch.tune.space import Choice, row_choices

__all__ = ["ALIGNMENT", "BLOCKINGS", "REWRITES", "KernelHarness", "input_tensors", "kernel_program", "network_rewrite",
           "runs_in_place", "write_kernel_export"]

ALIGNMENT = 16


def input_tensors(call: KernelCall) -> list[int]:
    """The activation tensors (by index) a call reads, first use first: its one-call program's inputs."""
    n_in = len(call.args) - call.n_outputs
    reads: list[int] = []
    for a in call.args[:n_in]:
        if a.kind == "tensor" and a.index not in reads:
            reads.append(a.index)
    return reads


def kernel_program(prog: Program, kernel: str) -> Program:
    """A program of one call: ``kernel``'s first call in ``prog``, its activations as inputs (``input_tensors``, in
    that order) and outputs."""
    call = next(c for c in prog.calls if c.func == kernel)
    reads = input_tensors(call)
    tensors: list[TensorInfo] = []
    consts = []
    new_index: dict[int, int] = {}
    args: list[Arg] = []
    outs: list[IOTensor] = []
    for a in call.args:
        if a.kind == "const":
            args.append(Arg("const", len(consts)))
            consts.append(prog.constants[a.index])
            continue
        if a.index not in new_index:
            t = prog.tensors[a.index]
            role = "input" if a.index in reads else "output"
            idx = new_index[a.index] = len(tensors)
            tensors.append(TensorInfo(idx, t.name, t.shape, t.dtype, role))
            if role == "output":
                outs.append(IOTensor(f"output{len(outs)}", idx, t.shape, t.dtype))
        args.append(Arg("tensor", new_index[a.index]))
    ins = [IOTensor(f"input{i}", new_index[t], prog.tensors[t].shape, prog.tensors[t].dtype)
           for i, t in enumerate(reads)]
    return Program({kernel: prog.funcs[kernel]}, [KernelCall(kernel, tuple(args), call.n_outputs, call.binding)],
                   tensors, consts, ins, outs, prog.fused_mod)


# The export's forms of a kernel after blocking (api.py, reschedule.py): each from the blocked kernel and its
# output count to the kernel the export emits.
REWRITES: dict[str, Callable[[tirx.PrimFunc, int], tirx.PrimFunc]] = {
    "none": lambda f, n: lean_schedule(f),
    "in place": lambda f, n: inplace_conv_schedule(lean_schedule(f), n),
    "pixel copy": lambda f, n: pixel_copy_schedule(lean_schedule(f), n),
    "pixel copy in the arena": lambda f, n: pixel_copy_schedule(lean_schedule(f), n, max_channels=1 << 30),
    "padded copy": padded_copy_schedule,  # depthwise kernels through a padded copy of each channel
    "channel outer": lambda f, n: channel_outer_schedule(lean_schedule(f), n),
    "pixel pair copy": lambda f, n: overlap_odd_row(pixel_pair_copy_schedule(lean_schedule(f), n)),  # NCHW 1x1 pairs
}


# How the export blocks a kernel by ``rows``: over output channels, or (NHWC 1x1 kernels the export pixel-blocks,
# reschedule.pixel_blocked and pixel_blocked_in_place; NCHW ones, pixel_pairs_nchw) over two output pixels and
# min(rows, 2) channels, or (a stem) over output channels under its window copy.
BLOCKINGS: dict[str, Callable[[tirx.PrimFunc, int], tirx.PrimFunc]] = {
    "channels": block_output_channels,
    "pixels": lambda f, rows: block_pixels(f, min(rows, 2)),
    "pixels, channels first": lambda f, rows: block_pairs_nchw(f, min(rows, 2)),
    "window copy": window_copy_schedule,  # a stem (NCHW, NHWC) through its pixel window's copy (reschedule.window_copies)
}


def runs_in_place(emitted: tirx.PrimFunc) -> bool:
    """Whether the export emitted this kernel for an in-place call (``mark_in_place``: no ``tirx.noalias``)."""
    return emitted.attrs is not None and "tirx.noalias" in emitted.attrs and not bool(emitted.attrs["tirx.noalias"])


def _same(a: tirx.PrimFunc, b: tirx.PrimFunc) -> bool:
    """Equal up to the aliasing marks (``mark_in_place``: the driver's call, not the kernel's schedule) and the
    export's lists of constant parameters (``mark_wide``, ``mark_sums``: the emission's choices)."""
    def plain(f: tirx.PrimFunc) -> tirx.PrimFunc:
        f = f.with_attr("tirx.noalias", True).with_attr(ALIASED_PARAMS, [])
        return f.with_attr(WIDEN_ATTR, []).with_attr(SUMS_ATTR, [])
    return tvm_ffi.structural_equal(plain(a), plain(b))


def network_rewrite(func: tirx.PrimFunc, rows: int, emitted: tirx.PrimFunc, n_outputs: int) -> tuple[str, str] | None:
    """(blocking, rewrite) (BLOCKINGS and REWRITES keys) that turn ``func`` blocked by ``rows`` and rewritten
    into ``emitted`` (the network export's kernel), None if none does. A patch stage of two forms
    (patch/stage_forms.py) in either."""
    default = form_default(func)
    forms = [func] if default is None else [with_form(func, d) for d in (default, not default)]
    for blocking, block in BLOCKINGS.items():
        for formed in forms:
            blocked = block(formed, rows)
            found = next((k for k, rw in REWRITES.items() if _same(rw(blocked, n_outputs), emitted)), None)
            if found is not None:
                return blocking, found
    return None


def write_kernel_export(kprog: Program, func: tirx.PrimFunc, out_dir: Path, rewrite: str, packed: bool = True,
                        wide: bool = True, unrolled: bool = False, in_place: bool | None = None,
                        inputs: list[bytes] | None = None, outlined: tuple[int, ...] = (), peeled: bool = False,
                        paired_down: bool | None = None) -> Path:
    """Export ``kprog`` (from ``kernel_program``) with its kernel scheduled as ``func`` (after blocking), then
    rewritten as ``rewrite`` (the network's form of it, REWRITES), its per-channel constants packed or not
    (``packed``), its weights widened where it can (``wide``: a board build's default where the Flash holds them),
    compiled with GCC's loop unroller or not (``unrolled``), run in place where the harness's arena plan can
    (``in_place`` None) or never (False: the network's export did not; the C differs by ``restrict``, which moves
    the unrolled code's counts), into ``out_dir``; ``inputs``: the bytes its project runs on (the network's
    activations, tune/activations.py; None: the project's seeded input), a patch stage's layer nests ``outlined``
    into functions of their own (codegen/outline.py), its patch loops ``peeled`` (codegen/peel_patches.py), its odd
    last columns ``paired_down`` or not (None: the stage's default; patch/stage_forms.py). Raises what the export
    raises when the candidate does not lower."""
    name = kprog.calls[0].func
    n_out = kprog.calls[0].n_outputs
    final = REWRITES[rewrite](with_form(func, paired_down), n_out)
    pairs = {name: [] if in_place is False else inplace_pairs(final, n_out) + inplace_conv_pairs(final, n_out)}
    _, infos = lower_plain({name: final}, C_TARGET, ALIGNMENT)
    aplan = plan_arena(kprog, {name: infos[name].workspace_bytes}, pairs, True, ALIGNMENT)
    if aplan.inplace_calls:
        final = mark_in_place(final, pairs[name])
    kprog = quiet_dead_channels(kprog, {name: final})  # as the network's export: its requantization's facts
    c_prog, csrc, _, _ = emit_kernels(kprog, {name: final}, ALIGNMENT, packing=None if packed else lambda n, f: False,
                                   wide=(lambda _n: True) if wide else None,
                                   unroll=(lambda n, f: True) if unrolled else None,
                                   outline=(lambda n, f: outlined) if outlined else None,
                                   peel=(lambda n, f: True) if peeled else None)
    info = {"model": name, "model_sha256": None, "arena_bytes": aplan.arena_bytes,
            "weights_bytes": kprog.weights_bytes, "rewrite": rewrite, "in_place": bool(aplan.inplace_calls),
            "packed_constants": packed, "wide_weights": wide, "unrolled": unrolled, "outlined": list(outlined),
            "peeled": peeled, "paired_down": paired_down,
            "inputs": [_io(io) for io in kprog.inputs], "outputs": [_io(io) for io in kprog.outputs]}
    samples: dict[str, bytes] = {}
    for io, data in zip(info["inputs"], inputs or []):
        if len(data) != io["bytes"]:
            raise ValueError(f"{name}: {len(data)} bytes of activations for its input {io['name']} of {io['bytes']}")
        io["sample"] = f"sample_{io['name']}.bin"
        samples[io["sample"]] = data
    write_directory(out_dir, {
        **samples,
        "model.c": driver_source(c_prog, csrc.functions, aplan, name, csrc),
        "tvmp_model.h": model_header(kprog, aplan.arena_bytes, name),
        "main.c": host_main(kprog.inputs, kprog.outputs),
        "Makefile": makefile(),
        "tvmp_export.json": json.dumps(info, indent=1) + "\n",
    })
    return out_dir


def _io(io: IOTensor) -> dict:
    return {"name": io.name, "dtype": io.dtype, "shape": list(io.shape), "bytes": io.nbytes}


@dataclass
class KernelHarness:
    """One tunable kernel of a network: its one-call program and the rewrite the network's export gave it."""

    name: str
    program: Program
    rewrite: str
    blocking: str = "channels"
    widened: bool = True  # its weights may be widened (False: the board's build keeps them int8 to fit its Flash)
    in_place: bool | None = None  # whether the network runs it in place (None: as the harness's own plan can)
    inputs: list[bytes] | None = None  # the network's activations at its first call (None: seeded bytes)

    @property
    def func(self) -> tirx.PrimFunc:
        """The kernel as the network's export lowers it, before blocking."""
        return self.program.funcs[self.name]

    @property
    def workload_func(self) -> tirx.PrimFunc:
        """The tuning workload: ``func`` keyed by its weights' form (``weights_key``), as a build looks it up."""
        return weights_key(self.func, self.widened)

    def export(self, choice: Choice, out_dir: Path) -> Path:
        """The harness export of this kernel blocked by ``choice.rows`` as the network's export blocks it
        (BLOCKINGS), its constants packed as ``choice.packed`` says, unrolled as ``choice.unrolled`` says, the
        nests ``choice.outlined`` names outlined, its patch loops peeled as ``choice.peeled`` says, its odd last
        columns as ``choice.paired_down`` says, its weights in the network's form."""
        return write_kernel_export(self.program, BLOCKINGS[self.blocking](self.func, choice.rows), out_dir,
                                   self.rewrite, choice.packed, self.widened, choice.unrolled, self.in_place,
                                   self.inputs, choice.outlined, choice.peeled, choice.paired_down)

    @cached_property
    def nests(self) -> int:
        """How many layer nests of this kernel, a patch stage, can be outlined (the outlining knob); 0 for any
        other kernel."""
        if not is_patch_stage(self.func):
            return 0
        final = REWRITES[self.rewrite](BLOCKINGS[self.blocking](with_form(self.func), DEFAULT_ROWS),
                                       self.program.calls[0].n_outputs)
        return layer_nests(lower_plain({self.name: final}, C_TARGET, ALIGNMENT)[0][self.name])

    @property
    def down_default(self) -> bool | None:
        """The default of this patch stage's odd-column form (its knob's), None when it has no such choice
        (patch/stage_forms.py)."""
        return form_default(self.func)

    @property
    def row_choices(self) -> list[int]:
        """The blockings this kernel can take as the network's export forms it: none for the NCHW pixel pairs (rows 2
        and 4 are the same pair kernel there, and rows 1 is another form, the one-pixel copy, decided before)."""
        return [] if self.blocking == "pixels, channels first" else row_choices(self.func)

    @cached_property
    def packs(self) -> bool:
        """Whether the export packs this kernel's per-channel constants (the packing knob applies)."""
        funcs = {self.name: self.func}
        return packed_constants(self.program, funcs)[1][self.name] is not self.func
