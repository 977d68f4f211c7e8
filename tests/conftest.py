"""Shared test fixtures and helpers: paths to the real models and fixtures, Relax binding walkers, a TE runner.

Test modules import the helpers with ``from conftest import ...`` (pytest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import glob
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te

from microtvm_projects import generate
from microtvm_projects.boards import Board
from microtvm_projects.emulator import qemu_command
from tvm_patch.codegen.c_kernels import MICRO_KERNELS
from tvm_patch.errors import TvmPatchError
from tvm_patch.paths import shared_models_dir

MLPERF = ["vww_96_int8", "resnet8_int8", "kws_int8"]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "tflite"
LLVM = {"kind": "llvm"}


@pytest.fixture(scope="session")
def shared_models() -> Path:
    return shared_models_dir()


@pytest.fixture(scope="session")
def mlperf_paths(shared_models) -> dict[str, Path]:
    return {name: shared_models / "mlperf_tiny" / f"{name}.tflite" for name in MLPERF}


def bindings(mod: tvm.IRModule, name: str = "main") -> list:
    """Every binding of function `name`, in order."""
    return [b for blk in mod[name].body.blocks for b in blk.bindings]


def compile_te(fn, shapes_dtypes):
    """Compile ``fn(*placeholders)`` (a TE compute) for the host; returns run(*arrays) -> numpy output."""
    phs = [te.placeholder(s, d, name=f"in{i}") for i, (s, d) in enumerate(shapes_dtypes)]
    out = fn(*phs)
    f = tvm.compile(te.create_prim_func([*phs, out]), target=tvm.target.Target(LLVM))

    def run(*arrays):
        o = tvm.runtime.empty([int(d) for d in out.shape], str(out.dtype))
        f(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in arrays], o)
        return o.numpy()

    return run


def mlperf_tflite_files() -> list[str]:
    """The MLPerf Tiny .tflite models of the shared folder; [] when it is missing (their tests then skip)."""
    try:
        return sorted(glob.glob(str(shared_models_dir() / "mlperf_tiny" / "*.tflite")))
    except TvmPatchError:
        return []


FIRMWARE_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "firmware"
TEMPLATE_SRC = Path(generate.__file__).parent / "template" / "src"


def run_test_firmware(source: Path, board: Board, tmp: Path, *cflags: str) -> tuple[Path, str]:
    """Build a test firmware (``source`` with ``main``, over the template's start-up code and QEMU board file)
    for ``board``'s emulator link, run it on QEMU (-icount shift=7); returns the ELF and what it printed."""
    script = tmp / f"{source.stem}_{board.key}.ld"
    script.write_text(generate.linker_script(board, "emulator", 4096))
    elf = tmp / f"{source.stem}_{board.key}.elf"
    subprocess.run(["arm-none-eabi-gcc", *board.cpu_flags, "-O3", "-Wall", "-Werror", "-DTVMP_ICOUNT_SHIFT=7",
                    f"-I{TEMPLATE_SRC}", f"-I{MICRO_KERNELS.parent}", *cflags, str(source),
                    *(str(TEMPLATE_SRC / f) for f in ("startup.c", "board_qemu.c", "cortexm.c", "tvmp_print.c")),
                    "-nostartfiles", "--specs=nano.specs", "--specs=nosys.specs", "-T", str(script), "-o", str(elf)],
                   check=True, timeout=120)
    out = subprocess.run(qemu_command(board, elf, 7), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-500:]
    return elf, out.stderr  # semihosting output: QEMU writes it to its stderr
