"""codegen/prune.py: which definitions a plain kernel loses (table of cases on hand-built TIR)."""

from __future__ import annotations

import pytest
import tvm
from tvm import tirx

from tvm_patch.codegen.prune import without_unused_definitions
from tvm_patch.tir_util import seq


def _names(func: tirx.PrimFunc) -> list[str]:
    """What the function still defines or stores into, in order: 'bind x', 'alloc L', 'decl W', 'store W'."""
    out: list[str] = []
    for s in func.body.seq if isinstance(func.body, tirx.SeqStmt) else [func.body]:
        if isinstance(s, tirx.Bind):
            out.append(f"bind {s.var.name}")
        elif isinstance(s, tirx.AllocBuffer):
            out.append(f"alloc {s.buffer.name}")
        elif isinstance(s, tirx.DeclBuffer):
            out.append(f"decl {s.buffer.name}")
        elif isinstance(s, tirx.BufferStore):
            out.append(f"store {s.buffer.name}")
        elif isinstance(s, (tirx.AttrStmt, tirx.IfThenElse)):
            out.append(type(s).__name__)
    return out


def _func(case: str) -> tirx.PrimFunc:
    ws = tirx.Var("workspace", tvm.ir.PointerType(tvm.ir.PrimType("int8")))
    out_ptr = tirx.Var("out", tvm.ir.PointerType(tvm.ir.PrimType("int8")))
    out = tirx.decl_buffer((4,), "int8", "out", data=out_ptr)
    x = tirx.Var("x", "int32")
    y = tirx.Var("y", "int32")
    w = tirx.decl_buffer((4,), "int8", "W")
    v = tirx.decl_buffer((4,), "int8", "V", data=w.data)  # a second view declared from W's address
    local = tirx.decl_buffer((4,), "int8", "L")
    decl_w = tirx.DeclBuffer(w, data=ws)
    decl_v = tirx.DeclBuffer(v, data=w.data)
    zero_local = tirx.BufferStore(local, tirx.const(0, "int8"), [0])
    fill_w = tirx.BufferStore(w, tirx.const(0, "int8"), [1])
    body = {
        # x read, y bound from x and read by nothing
        "binds": [tirx.Bind(x, 3), tirx.Bind(y, x + 1), tirx.BufferStore(out, tirx.Cast("int8", x), [0])],
        # a C local only zeroed: gone with its zeroing; W only filled with a constant: kept (workspace memory)
        "local": [decl_w, tirx.AllocBuffer(local), zero_local, fill_w],
        # a local read: kept with its zeroing
        "local read": [tirx.AllocBuffer(local), zero_local, tirx.BufferStore(out, tirx.BufferLoad(local, [0]), [0])],
        # W and V (a second view of its memory) both unread: both go
        "chain": [decl_w, decl_v, tirx.BufferStore(out, tirx.const(1, "int8"), [0])],
        # V read: both kept
        "chain read": [decl_w, decl_v, tirx.BufferStore(out, tirx.BufferLoad(v, [2]), [0])],
        # y bound alone under an attribute (a patch stage's one-statement nest whose loops a peeled copy folded
        # away, stage_forms.one_nest) or in a branch: gone, and the attribute and the branch with it
        "attr": [tirx.Bind(x, 3), tirx.AttrStmt(tvm.ir.expr.StringImm("nest"), "tvm_patch_one_nest",
                                               tirx.const(1, "int32"), tirx.Bind(y, x + 1)),
                 tirx.BufferStore(out, tirx.Cast("int8", x), [0])],
        "branch": [tirx.Bind(x, 3), tirx.IfThenElse(x > 1, tirx.Bind(y, x + 1), None),
                   tirx.BufferStore(out, tirx.Cast("int8", x), [0])],
    }[case]
    return tirx.PrimFunc([ws, out_ptr], seq(body))


@pytest.mark.parametrize("case, kept", [
    ("binds", ["bind x", "store out"]),
    ("local", ["decl W", "store W"]),
    ("local read", ["alloc L", "store L", "store out"]),
    ("chain", ["store out"]),
    ("chain read", ["decl W", "decl V", "store out"]),
    ("attr", ["bind x", "store out"]),
    ("branch", ["bind x", "store out"]),
])
def test_which_definitions_go(case: str, kept: list[str]) -> None:
    assert _names(without_unused_definitions(_func(case))) == kept
