"""Board projects: generation, firmware builds for the three boards, emulator runs (bit-exact with the host
build, exact and repeatable instruction counts, per-kernel profile), fit errors, the project API's options."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from microtvm_projects.api import ProjectAPI
from microtvm_projects.boards import BOARDS, get_board
from microtvm_projects.errors import FitError, ProjectError, ProtocolError
from microtvm_projects.firmware import build_firmware, load_project
from microtvm_projects.options import PROJECT_OPTIONS, resolve_options

from conftest import FIRMWARE_FIXTURES, run_test_firmware
from tvm_patch.board_build import run_project
from tvm_patch.export import export_model


pytestmark = pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None or shutil.which("qemu-system-arm") is None,
                                reason="make setup installs arm-none-eabi-gcc and qemu-system-arm")


@pytest.fixture(scope="module")
def export_in0(tmp_path_factory) -> Path:
    """zoo:mcunet-in0:int8 exported once for every test here."""
    out = tmp_path_factory.mktemp("export") / "in0"
    export_model("zoo:mcunet-in0:int8", out)
    return out


@pytest.fixture(scope="module")
def projects(export_in0, tmp_path_factory) -> dict[str, Path]:
    """One generated project per board."""
    root = tmp_path_factory.mktemp("projects")
    return {key: ProjectAPI().generate_project(export_in0, root / key, {"board": key}) for key in BOARDS}


def test_generated_project_layout(projects, export_in0):
    p = projects["f746"]
    for rel in ("Makefile", "src/firmware.c", "src/board_qemu.c", "model/model.c", "io/tvmp_io.c",
                "io/input0.bin", "io/expected0.bin", "linker/device.ld", "linker/emulator.ld", "export/tvmp_export.json"):
        assert (p / rel).is_file(), rel
    info = json.loads((export_in0 / "tvmp_export.json").read_text())
    proj = load_project(p)
    assert proj["board"] == "f746" and proj["model_sha256"] == info["model_sha256"]
    assert (p / "io" / "input0.bin").stat().st_size == info["inputs"][0]["bytes"]
    assert (p / "io" / "expected0.bin").stat().st_size == info["outputs"][0]["bytes"]
    dev = (p / "linker" / "device.ld").read_text()
    assert "ORIGIN = 0x8000000, LENGTH = 1048576" in dev and "ORIGIN = 0x20000000, LENGTH = 327680" in dev
    emu = (p / "linker" / "emulator.ld").read_text()
    assert "ORIGIN = 0x0, LENGTH = 1048576" in emu and "LENGTH = 327680" in emu
    h7 = (projects["h743"] / "linker" / "device.ld").read_text()
    assert "ORIGIN = 0x24000000, LENGTH = 524288" in h7 and "LENGTH = 2097152" in h7


@pytest.mark.parametrize("board", sorted(BOARDS))
def test_device_and_emulator_firmware_link_and_fit(projects, export_in0, board):
    info = json.loads((export_in0 / "tvmp_export.json").read_text())
    for runner in ("device", "emulator"):
        fw = build_firmware(projects[board], runner)
        assert fw.elf.is_file()
        assert fw.arena_bytes == info["arena_bytes"]
        assert fw.stack_bytes == 8192
        assert fw.sram_bytes == fw.arena_bytes + fw.stack_bytes + fw.data_bss_bytes
        assert fw.data_bss_bytes >= info["outputs"][0]["bytes"]  # the output buffer lives in .bss
        assert fw.flash_bytes > info["weights_bytes"]
        assert fw.sram_bytes <= get_board(board).sram_bytes and fw.flash_bytes <= get_board(board).flash_bytes


@pytest.mark.parametrize("board", ["f412", "f746"])  # Cortex-M4 (mps2-an386) and Cortex-M7 (mps2-an500)
def test_emulator_run_bit_exact_and_repeatable(projects, board):
    api = ProjectAPI(projects[board])
    api.build({"runner": "emulator"})
    first = api.run({"runner": "emulator", "timeout_sec": 120})
    second = api.run({"runner": "emulator", "timeout_sec": 120})
    assert first.bit_exact and first.mismatched_outputs == []
    assert first.instructions is not None and first.instructions > 1_000_000
    assert first.instructions == second.instructions
    assert first.est_cycles == round(first.instructions * get_board(board).qemu_cpi)
    assert first.latency_estimated and first.latency_ms == pytest.approx(first.est_cycles / (get_board(board).mhz * 1e3))
    assert 0 < first.stack_used_bytes < 8192


def test_emulator_profile_counts_every_call(projects, export_in0):
    """Through `tvm-patch run`'s function, which builds the variant it runs where missing (the profile one here)."""
    info = json.loads((export_in0 / "tvmp_export.json").read_text())
    api = ProjectAPI(projects["h743"])
    api.build({"runner": "emulator"})
    plain = api.run({"runner": "emulator"})
    assert not (projects["h743"] / "build" / "emulator-profile").exists()
    prof = run_project(projects["h743"], runner="emulator", profile=True, timeout_sec=600)
    assert prof["bit_exact"]
    assert [k["index"] for k in prof["kernels"]] == list(range(info["calls"]))
    assert all(k["instructions"] > 0 and k["name"].startswith("tvmp_") for k in prof["kernels"])
    total = sum(k["instructions"] for k in prof["kernels"])
    # the kernels are all of tvmp_run but its glue (input/output copies, call set-up)
    assert 0.99 * plain.instructions < total <= plain.instructions


def test_instruction_counter_is_exact(tmp_path):
    """A loop of 2n instructions measures 2n + c with the same c for every n, on both emulated cores."""
    for key in ("f412", "h743"):
        _, printed = run_test_firmware(FIRMWARE_FIXTURES / "calibrate.c", get_board(key), tmp_path)
        counts = {int(n): int(c) for n, c in re.findall(r"n=(\d+) count=(\d+)", printed)}
        assert len(counts) == 7
        const = counts[1] - 2
        assert const > 0
        assert all(c == 2 * n + const for n, c in counts.items()), counts


def test_link_overflow_is_one_line_with_the_bytes(projects, tmp_path):
    """The second check: a project whose export figures understate its needs is caught at the link."""
    p = tmp_path / "lying"
    shutil.copytree(projects["f412"], p, ignore=shutil.ignore_patterns("build"))
    proj = json.loads((p / "tvmp_project.json").read_text())
    proj["export"]["arena_bytes"] = 0
    proj["options"]["stack_bytes"] = 250_000
    (p / "tvmp_project.json").write_text(json.dumps(proj))
    with pytest.raises(FitError) as e:
        build_firmware(p, "emulator")
    msg = str(e.value)
    assert "\n" not in msg
    assert re.fullmatch(r"SRAM: needs [\d,]+ B \(arena 46,080 \+ stack 250,000 \+ data/bss [\d,]+\), f412 has 262,144 B", msg)


def test_stack_below_the_kernels_scratch_is_refused(tmp_path, mlperf_paths):
    """A stack too small for the kernels' stack scratch (the widened pixel pairs, reported by the export) is one
    line with the figures, exit 2, before anything is compiled."""
    out = tmp_path / "small-stack"
    proc = subprocess.run([sys.executable, "-m", "tvm_patch", "build", str(mlperf_paths["resnet8_int8"]), "--board", "f412", "--plan", "none", "--stack", "2048", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"tvm-patch: error: stack: the kernels keep up to 2,304 B on the stack \(widened pixel pairs\), so "
                        r"a stack of 2,048 B leaves less than 1,024 B for the rest; give --stack 3,328 or more", lines[0])
    assert not (out / "build").exists()


def test_oversize_model_is_refused_before_compiling(tmp_path):
    out = tmp_path / "big"
    proc = subprocess.run([sys.executable, "-m", "tvm_patch", "build", "zoo:mbv2-w1.0-r224:int8", "--board", "f412",
                           "--plan", "none", "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert re.fullmatch(r"tvm-patch: error: SRAM: needs at least 1,417,120 B \(arena 1,404,928 \+ stack 8,192 \+ "
                        r"outputs 4,000\), f412 has 262,144 B", lines[0])


def test_cli_board_build_and_run_patch_mode(tmp_path):
    """`tvm-patch build --board --run emulator --json` on a patch-mode build, then `tvm-patch run` on it."""
    out = tmp_path / "patch"
    proc = subprocess.run([sys.executable, "-m", "tvm_patch", "build", "zoo:mcunet-in0:int8", "--board", "f746",
                           "--patches", "3", "--split", "auto", "--run", "emulator", "--json", "-o", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["board"] == "f746" and r["fits"] and r["run"]["bit_exact"]
    assert r["export"]["plan"]["patches"] == 3 and r["export"]["plan"]["split_layers"]
    # --wide-weights auto (the default): all of mcunet-in0's widened weights overflow the F746's 1 MB of Flash, so
    # the kernels with the fewest MACs per byte stay int8 and the rest are widened; the run still bit-exact
    ex = r["export"]
    assert ex["wide_narrowed"] and ex["wide_weights"] and not set(ex["wide_narrowed"]) & set(ex["wide_weights"])
    assert r["flash_bytes"] <= r["board_flash_bytes"]
    assert r["sram_bytes"] == r["arena_bytes"] + r["stack_bytes"] + r["data_bss_bytes"]
    assert r["arena_bytes"] == r["export"]["arena_bytes"]
    # the network's instructions per MAC count the stage's patched MACs (its halos recomputed), not zero for it
    assert r["run"]["macs"] == r["export"]["macs"] > 6_364_224  # mcunet-in0's layer-by-layer MACs
    assert r["run"]["per_mac"] == round(r["run"]["instructions"] / r["run"]["macs"], 3)
    assert set(r["conditions"]) >= {"clock_mhz", "caches", "opt", "compiler", "model_sha256", "tvm_patch_version"}
    assert r["conditions"]["clock_mhz"] == 216 and r["conditions"]["opt"] == "O3"
    run = subprocess.run([sys.executable, "-m", "tvm_patch", "run", str(out), "--runner", "emulator", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["run"]["instructions"] == r["run"]["instructions"]


def test_emulator_with_the_machines_memory(projects, export_in0, tmp_path):
    """emulator_memory "machine": a firmware the F412 cannot hold (a 300 kB stack) is linked with the QEMU machine's
    memory, runs bit-exact and counts what the board-sized link counts; the report says it does not fit the board.
    The board's link and the device's keep refusing it, naming the board."""
    from microtvm_projects.boards import QEMU_RAM_BYTES
    from tvm_patch.board_build import firmware_json

    opts = {"board": "f412", "stack_bytes": 300 * 1024, "emulator_memory": "machine"}
    big = ProjectAPI().generate_project(export_in0, tmp_path / "machine", opts)
    fw = ProjectAPI(big).build({"runner": "emulator"})
    assert fw.memory == "machine" and get_board("f412").sram_bytes < fw.sram_bytes < QEMU_RAM_BYTES
    report = firmware_json(fw, load_project(big))
    assert report["emulator_memory"] == "machine" and report["fits"] is False
    assert f"LENGTH = {QEMU_RAM_BYTES}" in (big / "linker" / "emulator.ld").read_text()
    assert f"LENGTH = {get_board('f412').sram_bytes}" in (big / "linker" / "device.ld").read_text()
    run = run_project(big, runner="emulator", timeout_sec=600)
    assert run["bit_exact"]
    assert run["instructions"] == run_project(projects["f412"], runner="emulator", timeout_sec=600)["instructions"]
    with pytest.raises(FitError, match=r"SRAM: needs at least .*, f412 has 262,144 B"):
        ProjectAPI(big).build({"runner": "device"})
    board_sized = ProjectAPI().generate_project(export_in0, tmp_path / "board", dict(opts, emulator_memory="board"))
    with pytest.raises(FitError, match=r"f412 has 262,144 B"):
        ProjectAPI(board_sized).build({"runner": "emulator"})


def test_emulator_failures_are_one_line(projects, tmp_path):
    api = ProjectAPI(projects["f746"])
    api.build({"runner": "emulator"})
    with pytest.raises(ProtocolError, match="no END .* within"):
        api.run({"runner": "emulator", "timeout_sec": 0.001})
    broken = tmp_path / "broken"
    shutil.copytree(projects["f746"], broken)
    (broken / "build" / "emulator" / "firmware.elf").write_bytes(b"not an elf")
    with pytest.raises(ProtocolError, match="QEMU exited with status"):
        ProjectAPI(broken).run({"runner": "emulator", "timeout_sec": 60})


def test_cli_errors(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tvm_patch", "run", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "not a board project" in proc.stderr and len(proc.stderr.splitlines()) == 1
    proc = subprocess.run([sys.executable, "-m", "tvm_patch", "build", "zoo:mcunet-in0:int8", "--run", "emulator",
                           "-o", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--board" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "tvm_patch", "build", "zoo:mcunet-in0:int8", "--board", "f412",
                           "--plan", "none", "--run", "device", "--emulator-memory", "machine", "-o",
                           str(tmp_path / "y")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "--emulator-memory machine" in proc.stderr


def test_project_options_are_records():
    info = ProjectAPI().server_info_query()
    assert info["is_template"] and info["platform_name"] == "tvm-patch-stm32"
    names = {o["name"]: o for o in info["project_options"]}
    assert names["board"]["required"] == ["generate_project"] and names["board"]["choices"] == list(BOARDS)
    assert names["opt"]["default"] == "O3"
    assert len(names) == len(PROJECT_OPTIONS)
    assert resolve_options({"board": "h743"}, "generate_project")["stack_bytes"] == 8192
    for bad, words in [({}, "needs the project option 'board'"), ({"board": "f4"}, "choose one of"),
                       ({"board": "f412", "opt": 3}, "expected str"), ({"board": "f412", "nope": 1}, "unknown project option"),
                       ({"board": "f412", "stack_bytes": 100}, "stack_bytes")]:
        with pytest.raises(ProjectError, match=re.escape(words)):
            resolve_options(bad, "generate_project")
    with pytest.raises(ProjectError, match="unknown board"):
        get_board("f999")


def test_per_mac_without_the_stage_macs_is_unknown():
    """A patch stage whose MACs are unknown (no analytic profile) leaves the network's instructions per MAC unset
    rather than dividing by the other kernels' MACs alone; the other calls keep theirs."""
    from tvm_patch.board_build import per_mac

    run = {"instructions": 3000, "kernels": [{"index": 0, "instructions": 2000}, {"index": 1, "instructions": 1000}]}
    calls = [{"index": 0, "kind": "patch_stage", "macs": 0}, {"index": 1, "kind": "conv1x1", "macs": 500}]
    out = per_mac(run, calls)
    assert out["per_mac"] is None and out["kernels"][1]["per_mac"] == 2.0
    known = per_mac(run, [dict(calls[0], macs=1000), calls[1]])
    assert known["macs"] == 1500 and known["per_mac"] == 2.0
