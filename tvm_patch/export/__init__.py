"""Whole network as plain C over one static arena: no allocator, no TVM runtime.

``export_model(model, out_dir)`` writes ``model.c`` (kernels, weights as ``static const`` arrays, the
arena ``static uint8_t tvmp_arena[N]`` and ``int tvmp_run(...)``), ``tvmp_model.h``, a host ``main.c`` and
a ``Makefile``; ``tvm-patch build`` is its command line.
"""

from tvm_patch.export.api import ExportResult, apply_patch_stage, export_model, write_directory
from tvm_patch.export.host import CheckResult, build_host, check_outputs, run_host, seeded_inputs
from tvm_patch.export.lower import Program, lower_module
from tvm_patch.export.plan import ArenaPlan, plan_arena

__all__ = [
    "ArenaPlan", "CheckResult", "ExportResult", "Program", "apply_patch_stage", "build_host", "check_outputs",
    "export_model", "lower_module", "plan_arena", "run_host", "seeded_inputs", "write_directory",
]
