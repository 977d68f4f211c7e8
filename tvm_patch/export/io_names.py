"""The C names of ``tvmp_run``'s buffers: one per network input and output, after the model's own tensor names.

A single input or output is ``input`` / ``output``. With several, each takes its tensor's name in the model (an
ONNX graph input/output name, a .tflite tensor name such as ``StatefulPartitionedCall:1``) sanitised into a C
identifier: every character outside ``[A-Za-z0-9_]`` becomes ``_``. The sanitised name is kept only when it is a
usable identifier: it starts with a letter, is at most 63 characters (C99's significant length), is no C keyword
or name the generated code uses inside ``tvmp_run`` (``memcpy``, the ``<stdint.h>`` types, anything starting with
``tvmp`` in any case, reserved ``_`` names), no other input or output wants it and it is not another buffer's
index name. Otherwise the buffer keeps its index name (``input1``, ``output2``): a model without tensor names
(an IRModule) gets index names throughout.
``tvmp_model.h`` gives each buffer's original name in ``TVMP_INPUT<i>_NAME`` / ``TVMP_OUTPUT<i>_NAME``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from tvm_patch.export.lower import Program

__all__ = ["c_identifier", "io_c_names", "name_io"]

_C_KEYWORDS = frozenset("""
auto break case char const continue default do double else enum extern float for goto if inline int long register
restrict return short signed sizeof static struct switch typedef union unsigned void volatile while _Bool _Complex
_Imaginary bool true false
""".split())
# identifiers the generated model.c uses inside tvmp_run (a parameter of that name would shadow them)
_USED = frozenset({"memcpy", "main", "NULL", "size_t", "int8_t", "uint8_t", "int16_t", "uint16_t", "int32_t",
                   "uint32_t", "int64_t", "uint64_t"})
_MAX_LEN = 63


def c_identifier(name: str) -> str | None:
    """`name` sanitised into a C identifier for a ``tvmp_run`` parameter, or None when it cannot be one (see the
    module docstring)."""
    ident = re.sub(r"[^A-Za-z0-9_]", "_", name or "")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", ident) or len(ident) > _MAX_LEN:
        return None
    if ident in _C_KEYWORDS or ident in _USED or ident.lower().startswith("tvmp"):
        return None
    return ident


def io_c_names(n_inputs: int, n_outputs: int, input_names: Sequence[str] = (),
               output_names: Sequence[str] = ()) -> tuple[list[str], list[str]]:
    """The C parameter names of `n_inputs` inputs and `n_outputs` outputs, from the model's tensor names (ignored
    when their count does not match); unique across both groups."""
    def group(n: int, names: Sequence[str], base: str) -> tuple[list[str], list[str | None]]:
        fallback = [base] if n == 1 else [f"{base}{i}" for i in range(n)]
        wanted = [c_identifier(x) for x in names] if len(names) == n and n > 1 else [None] * n
        return fallback, wanted

    fallback_in, wanted_in = group(n_inputs, input_names, "input")
    fallback_out, wanted_out = group(n_outputs, output_names, "output")
    fallback, wanted = fallback_in + fallback_out, wanted_in + wanted_out
    # a model name is kept when no other buffer wants it and it is no other buffer's index name (so every name
    # is unique, and output2 is never a name of output 0)
    names = [w if w is not None and wanted.count(w) == 1 and w not in fallback[:k] + fallback[k + 1:] else f
             for k, (w, f) in enumerate(zip(wanted, fallback))]
    return names[:n_inputs], names[n_inputs:]


def name_io(prog: Program, input_names: Sequence[str] = (), output_names: Sequence[str] = ()) -> Program:
    """`prog` with its inputs and outputs named by `io_c_names` (each keeps the model's own name in
    `source_name`, when the counts match)."""
    ins, outs = io_c_names(len(prog.inputs), len(prog.outputs), input_names, output_names)

    def named(group: list, c_names: list[str], source: Sequence[str]) -> list:
        src = list(source) if len(source) == len(group) else [""] * len(group)
        return [dataclasses.replace(io, name=c, source_name=s) for io, c, s in zip(group, c_names, src)]

    return dataclasses.replace(prog, inputs=named(prog.inputs, ins, input_names),
                               outputs=named(prog.outputs, outs, output_names))
