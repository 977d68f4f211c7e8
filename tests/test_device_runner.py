"""The device runner (microtvm_projects/device.py) without hardware: a pseudo-terminal stands in for the ST-LINK
virtual COM port and a fake device process writes a scenario to its master side; fake openocd/pyocd scripts on
PATH stand in for the flash tools."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import tty
from pathlib import Path
from types import SimpleNamespace

import pytest

from microtvm_projects.boards import get_board
from microtvm_projects.device import (
    ST_LINK_USB_IDS,
    SerialTransport,
    find_port,
    flash,
    run_on_device,
)
from microtvm_projects.errors import ProjectError, ProtocolError
from microtvm_projects.protocol import DeviceFaultError, SessionTimeoutError, read_session

# The fake device: writes one scenario to stdout (the pty master), then idles like firmware after its run.
FAKE_DEVICE = r'''
import random, sys, time, zlib

scenario = sys.argv[1]
out = sys.stdout.buffer
OUT0 = bytes(range(100))
OUT1 = bytes([1, 2, 3])


def send(data, piece=37):
    for i in range(0, len(data), piece):
        out.write(data[i:i + piece])
        out.flush()
        time.sleep(0.001)


def lines(*ls):
    send(b"".join(l.encode() + b"\r\n" for l in ls))


def session():
    ls = ["TVMP1 BEGIN board=f746 runner=device model=00112233aabbccdd arena=4096 opt=O3",
          "TVMP1 KERNEL index=0 name=conv0 count=1000",
          "debug: layer 0 done",
          "TVMP1 KERNEL index=1 name=fc count=200",
          "TVMP1 TOTAL unit=cycles count=1234",
          "TVMP1 STACK used=512 size=4096"]
    for i, o in enumerate((OUT0, OUT1)):
        ls.append(f"TVMP1 OUTPUT index={i} bytes={len(o)} crc32={zlib.crc32(o):08x}")
        ls += [f"TVMP1 DATA index={i} offset={k} hex={o[k:k + 32].hex()}" for k in range(0, len(o), 32)]
    return ls + ["TVMP1 END status=0"]


s = session()
if scenario == "good":
    send(b"\x00")  # the UART glitch at reset
    lines("STM32F746 boot", *s)
elif scenario == "reset":
    lines(*s[:4], "STM32F746 boot", *s)
elif scenario == "midline":
    lines(*s[:3])
    send(b"TVMP1 DATA index=0 off")
elif scenario == "garbage":
    send(random.Random(7).randbytes(2000))
elif scenario == "flood":
    send(b"U" * 5000)
elif scenario == "fault":
    lines(*s[:2], "TVMP1 FAULT kind=busfault pc=0x08000abc cfsr=0x00008200")
elif scenario == "silent":
    pass
else:
    sys.exit("unknown scenario " + scenario)
time.sleep(60)
'''

OUT0 = bytes(range(100))
OUT1 = bytes([1, 2, 3])
F746 = get_board("f746")


class Pty:
    """A pseudo-terminal: `path` is the serial port the host opens, `master` the device's side."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.path = os.ttyname(self.slave)
        self.procs: list[subprocess.Popen] = []

    def start_device(self, scenario: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", FAKE_DEVICE, scenario], stdout=self.master,
                                stdin=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def open_fds(self) -> int:
        """How many of this process's file descriptors point at the port (the fixture holds one)."""
        n = 0
        for fd in os.listdir("/proc/self/fd"):
            try:
                n += os.readlink(f"/proc/self/fd/{fd}") == self.path
            except OSError:
                pass
        return n

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=5)
        os.close(self.master)
        os.close(self.slave)


@pytest.fixture
def pty():
    p = Pty()
    yield p
    p.close()


def read_run(pty: Pty, scenario: str, timeout_sec: float):
    with SerialTransport() as port:
        port.open(pty.path, 115200, timeout_sec=1.0)
        pty.start_device(scenario)
        return read_session(lambda left: port.read(4096, left), timeout_sec)


# --- the serial protocol over a pseudo-terminal ---------------------------------------------------------------------

def test_good_run(pty):
    record = read_run(pty, "good", 10.0)
    assert (record.board, record.runner, record.model, record.arena_bytes, record.opt) == (
        "f746", "device", "00112233aabbccdd", 4096, "O3")
    assert (record.unit, record.count, record.stack_used_bytes, record.stack_size_bytes) == ("cycles", 1234, 512, 4096)
    assert [(k.index, k.name, k.count) for k in record.kernels] == [(0, "conv0", 1000), (1, "fc", 200)]
    assert record.outputs == [OUT0, OUT1]
    assert record.noise == ["STM32F746 boot", "debug: layer 0 done"]


def test_device_reset_mid_run(pty):
    with pytest.raises(ProtocolError) as info:
        read_run(pty, "reset", 10.0)
    assert str(info.value) == (
        "device reset during the run (a second BEGIN at line 6); check power and the reset line, then run again")


@pytest.mark.parametrize(
    "scenario, stage, words",
    [
        ("midline", "mid-line", ["after BEGIN, 2 protocol lines in", "stopped mid-line after 22 bytes of "
                                 "'TVMP1 DATA index=0 off'", "hung mid-run"]),
        ("garbage", None, ["no BEGIN seen", "garbled"]),
        ("silent", "no BEGIN", ["nothing received from the device", "reset the board"]),
    ],
)
def test_a_stalled_device_ends_at_the_timeout(pty, scenario, stage, words):
    timeout = 1.5
    start = time.monotonic()
    with pytest.raises(SessionTimeoutError) as info:
        read_run(pty, scenario, timeout)
    elapsed = time.monotonic() - start
    assert timeout <= elapsed < timeout + 1.0
    message = str(info.value)
    assert message.startswith("no END from the device within 1.5 s (") and "\n" not in message
    if stage:
        assert info.value.stage == stage
    for word in words:
        assert word in message, (word, message)


def test_a_flood_without_newlines_is_an_error_not_a_hang(pty):
    start = time.monotonic()
    with pytest.raises(ProtocolError, match="longer than 4096 chars with no newline"):
        read_run(pty, "flood", 10.0)
    assert time.monotonic() - start < 5.0


def test_device_fault(pty):
    with pytest.raises(DeviceFaultError) as info:
        read_run(pty, "fault", 10.0)
    assert str(info.value).startswith("the device faulted: busfault at pc=0x08000abc cfsr=0x00008200 (line 3); ")
    assert info.value.pc == 0x08000ABC


# --- the serial transport ------------------------------------------------------------------------------------------

def test_transport_read_timeout_and_write(pty):
    with SerialTransport() as port:
        port.open(pty.path, 115200, timeout_sec=1.0)
        start = time.monotonic()
        assert port.read(10, 0.3) == b""
        assert 0.25 <= time.monotonic() - start < 1.0
        os.write(pty.master, b"hello")
        time.sleep(0.05)
        assert port.read(3, 1.0) == b"hel"
        assert port.read(100, 1.0) == b"lo"
        port.write(b"ping", 1.0)
        assert os.read(pty.master, 100) == b"ping"
    assert not port.is_open
    port.close()  # twice is fine


def test_transport_cannot_open():
    with pytest.raises(ProjectError) as info:
        SerialTransport().open("/dev/tvmp-no-such-port")
    assert str(info.value) == (
        "cannot open serial port /dev/tvmp-no-such-port: No such file or directory; "
        "check the board is connected, or pass another --port")


def test_transport_not_open():
    with pytest.raises(ProjectError, match="not open"):
        SerialTransport().read(1, 0.1)


# --- finding the ST-LINK port --------------------------------------------------------------------------------------

def port_info(device: str, vid: int | None, pid: int | None):
    return SimpleNamespace(device=device, vid=vid, pid=pid, description="", serial_number=None)


def test_st_link_ids():
    assert {vid for vid, _ in ST_LINK_USB_IDS} == {0x0483}
    assert {pid for _, pid in ST_LINK_USB_IDS} == {0x374B, 0x3752, 0x374E, 0x374F, 0x3753, 0x3754}


def test_find_port():
    other = [port_info("/dev/ttyS0", None, None), port_info("/dev/ttyUSB0", 0x0403, 0x6001),
             port_info("/dev/ttyACM9", 0x0483, 0x3748)]  # ST-LINK/V2 has no virtual COM port
    assert find_port(lambda: other + [port_info("/dev/ttyACM0", 0x0483, 0x374B)]) == "/dev/ttyACM0"
    assert find_port(lambda: [port_info("/dev/ttyACM1", 0x0483, 0x3754)]) == "/dev/ttyACM1"
    with pytest.raises(ProjectError) as info:
        find_port(lambda: other)
    assert str(info.value) == "no ST-LINK serial port found; connect the board or pass --port"
    with pytest.raises(ProjectError) as info:
        find_port(lambda: [port_info("/dev/ttyACM1", 0x0483, 0x3752), port_info("/dev/ttyACM0", 0x0483, 0x374E)])
    assert str(info.value) == (
        "several ST-LINK serial ports found (/dev/ttyACM0, /dev/ttyACM1); pass --port with one of them")


def test_find_port_on_this_machine_is_a_clean_error_or_a_port():
    try:
        assert find_port().startswith("/dev/")
    except ProjectError as err:
        assert "ST-LINK" in str(err)


# --- run_on_device with a fake flasher -----------------------------------------------------------------------------

def test_run_on_device_opens_the_port_before_flashing(pty, tmp_path):
    os.write(pty.master, b"TVMP1 DATA index=0 offset=0 hex=00\r\n")  # a previous run's leftovers
    time.sleep(0.05)
    calls = []

    def flasher(elf, board, probe, timeout_sec):
        calls.append((elf, board.key, probe, timeout_sec, pty.open_fds()))
        pty.start_device("good")  # the reset starts the firmware, which prints at once
        return "fake"

    record = run_on_device(tmp_path / "fw.elf", F746, port=pty.path, probe="pyocd", timeout_sec=10.0,
                           flash_timeout_sec=7.0, flasher=flasher)
    assert record.outputs == [OUT0, OUT1]
    assert calls == [(tmp_path / "fw.elf", "f746", "pyocd", 7.0, 2)]  # the fixture's fd + the runner's port
    assert pty.open_fds() == 1  # closed again


def test_run_on_device_closes_the_port_on_errors(pty, tmp_path):
    def failing(elf, board, probe, timeout_sec):
        raise ProjectError("openocd failed to flash f746 (exit 1): Error: open failed; check the probe")

    with pytest.raises(ProjectError, match="open failed"):
        run_on_device(tmp_path / "fw.elf", F746, port=pty.path, flasher=failing)
    assert pty.open_fds() == 1

    with pytest.raises(ProtocolError, match="device reset during the run"):
        run_on_device(tmp_path / "fw.elf", F746, port=pty.path, timeout_sec=10.0,
                      flasher=lambda *a: pty.start_device("reset") and "fake")
    assert pty.open_fds() == 1


def test_run_on_device_refuses_another_boards_firmware(pty, tmp_path):
    with pytest.raises(ProtocolError) as info:
        run_on_device(tmp_path / "fw.elf", get_board("f412"), port=pty.path, timeout_sec=10.0,
                      flasher=lambda *a: pty.start_device("good") and "fake")
    assert str(info.value).startswith("the device ran firmware built for f746, not f412; ")


def test_run_on_device_without_a_port_is_a_clean_error(tmp_path):
    with pytest.raises(ProjectError, match="cannot open serial port /dev/tvmp-no-such-port"):
        run_on_device(tmp_path / "fw.elf", F746, port="/dev/tvmp-no-such-port", flasher=lambda *a: "fake")


# --- flash() with fake tools on PATH -------------------------------------------------------------------------------

@pytest.fixture
def elf(tmp_path) -> Path:
    path = tmp_path / "build dir" / "firmware.elf"  # a space, as in real home directories
    path.parent.mkdir()
    path.write_bytes(b"\x7fELF")
    return path


@pytest.fixture
def bindir(tmp_path, monkeypatch) -> Path:
    """An empty directory as the whole PATH: no real openocd or pyocd can be found."""
    d = tmp_path / "bin"
    d.mkdir()
    monkeypatch.setenv("PATH", str(d))
    return d


def fake_tool(bindir: Path, name: str, body: str) -> Path:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def recorder(bindir: Path, name: str) -> Path:
    log = bindir.parent / f"{name}.args"
    fake_tool(bindir, name, f'for a in "$@"; do printf "%s\\n" "$a"; done > "{log}"\n')
    return log


def test_flash_without_tools(bindir, elf):
    with pytest.raises(ProjectError) as info:
        flash(elf, F746)
    assert str(info.value) == (
        "neither openocd nor pyocd is on PATH; install one (apt-get install openocd, or pip install pyocd)")
    with pytest.raises(ProjectError) as info:
        flash(elf, F746, probe="openocd")
    assert str(info.value) == "openocd is not on PATH; install it (apt-get install openocd) or pass --probe pyocd"


def test_flash_refuses_bad_arguments(bindir, elf, tmp_path):
    with pytest.raises(ProjectError, match="unknown probe 'jlink'; choose one of openocd, pyocd"):
        flash(elf, F746, probe="jlink")
    with pytest.raises(ProjectError, match="no firmware at .*missing.elf; build the project first"):
        flash(tmp_path / "missing.elf", F746)


def test_flash_with_openocd(bindir, elf):
    log = recorder(bindir, "openocd")
    recorder(bindir, "pyocd")
    assert flash(elf, get_board("f412")) == "openocd"  # openocd first when both are there
    assert log.read_text().splitlines() == [
        "-f", "interface/stlink.cfg", "-f", "target/stm32f4x.cfg",
        "-c", f"program {{{elf.as_posix()}}} verify reset exit"]


def test_flash_with_pyocd(bindir, elf):
    log = recorder(bindir, "pyocd")
    assert flash(elf, get_board("h743")) == "pyocd"  # the only one there
    assert log.read_text().splitlines() == ["flash", "-t", "stm32h743zitx", str(elf)]
    recorder(bindir, "openocd")
    assert flash(elf, get_board("h743"), probe="pyocd") == "pyocd"


def test_flash_tool_fails_with_its_meaningful_line(bindir, elf):
    fake_tool(bindir, "openocd", """
echo "Open On-Chip Debugger 0.12.0" >&2
echo "Info : clock speed 1000 kHz" >&2
echo "Error: open failed" >&2
echo "in procedure 'program'" >&2
echo "** OpenOCD init failed **" >&2
echo "shutdown command invoked" >&2
exit 1
""")
    with pytest.raises(ProjectError) as info:
        flash(elf, F746)
    assert str(info.value) == (
        "openocd failed to flash f746 (exit 1): Error: open failed; check the probe connection and --board, "
        "then run again")


def test_flash_tool_that_hangs_is_killed(bindir, elf, tmp_path):
    pidfile = tmp_path / "child.pid"
    sleep = shutil.which("sleep", path="/usr/bin:/bin")
    # the child keeps the tool's stdout/stderr open: killing only the tool would leave communicate() waiting
    fake_tool(bindir, "openocd", f'{sleep} 30 &\necho $! > "{pidfile}"\nwait\n')
    start = time.monotonic()
    with pytest.raises(ProjectError) as info:
        flash(elf, F746, timeout_sec=0.5)
    assert time.monotonic() - start < 3.0
    assert str(info.value) == (
        "openocd did not finish flashing f746 within 0.5 s (killed); check the probe's USB cable and that the "
        "board is powered, then run again")
    child = int(pidfile.read_text())
    status = Path(f"/proc/{child}/status")
    deadline = time.monotonic() + 2.0
    while status.exists() and "State:\tZ" not in status.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not status.exists() or "State:\tZ" in status.read_text()  # dead (maybe not yet reaped)
