"""The device runner: flash a board with openocd or pyocd and read its run over the ST-LINK virtual COM port.

`run_on_device` opens the serial port first (so no line printed right after the reset is lost), flashes and
resets the board, then reads one protocol session (microtvm_projects.protocol) with an overall timeout. Every
step is bounded: the flash tool runs under a timeout and is killed with its process group, every serial read
and write has a timeout. Failures are one-line `ProjectError`s (exit code 2).

Flashing and the port are injectable (`flasher=`, `port=`, `find_port(comports=)`), so the runner is tested
against a pseudo-terminal and a fake device process without hardware.

Standalone: the standard library, pyserial and this package only.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from microtvm_projects.boards import Board
from microtvm_projects.errors import ProjectError, ProtocolError
from microtvm_projects.protocol import RunRecord, read_session

# The virtual COM port of the ST-LINK on NUCLEO and Discovery boards (VID 0x0483, STMicroelectronics):
# 0x374B and 0x3752 are ST-LINK/V2-1 (with and without mass storage), 0x374E, 0x374F, 0x3753 (two VCPs) and
# 0x3754 are STLINK-V3 variants (the PIDs in OpenOCD's udev rules). NUCLEO-F412ZG and NUCLEO-H743ZI carry a
# V2-1 (V3 on newer revisions), 32F746GDISCOVERY a V2-1.
ST_VID = 0x0483
ST_LINK_USB_IDS: tuple[tuple[int, int], ...] = tuple(
    (ST_VID, pid) for pid in (0x374B, 0x3752, 0x374E, 0x374F, 0x3753, 0x3754)
)

PROBES = ("openocd", "pyocd")
_INSTALL = {"openocd": "apt-get install openocd", "pyocd": "pip install pyocd"}

DEFAULT_BAUD = 115200
DEFAULT_RUN_TIMEOUT_SEC = 60.0
DEFAULT_FLASH_TIMEOUT_SEC = 120.0

Flasher = Callable[[Path, Board, Optional[str], float], str]


def _is_st_link(info: Any) -> bool:
    return (getattr(info, "vid", None), getattr(info, "pid", None)) in ST_LINK_USB_IDS


def find_port(comports: Callable[[], Iterable[Any]] | None = None) -> str:
    """The device path of the one ST-LINK virtual COM port, so --port can be left out with a single board."""
    if comports is None:
        from serial.tools import list_ports

        comports = list_ports.comports
    found = sorted(str(p.device) for p in comports() if _is_st_link(p))
    if not found:
        raise ProjectError("no ST-LINK serial port found; connect the board or pass --port")
    if len(found) > 1:
        raise ProjectError(f"several ST-LINK serial ports found ({', '.join(found)}); pass --port with one of them")
    return found[0]


def _os_reason(err: BaseException) -> str:
    """The operating system's words for a failure (e.g. "Permission denied"), not pyserial's wrapping."""
    for e in (err.__cause__, err.__context__, err):
        if isinstance(e, OSError) and e.strerror and "could not open port" not in e.strerror:
            return e.strerror
    return str(err).splitlines()[0] if str(err) else type(err).__name__


class SerialTransport:
    """A serial port with a timeout on every read and write, so a silent or stuck board never hangs the host."""

    def __init__(self) -> None:
        self._serial: Any = None
        self.port: str | None = None
        self._timeout: float | None = None

    @property
    def is_open(self) -> bool:
        """True between open() and close()."""
        return self._serial is not None

    def open(self, port: str, baud: int = DEFAULT_BAUD, timeout_sec: float = 5.0) -> None:
        """Open `port` raw at `baud` (8N1); a port that cannot be opened is a one-line error with the OS reason."""
        import serial

        try:
            self._serial = serial.Serial(port=port, baudrate=baud, timeout=timeout_sec, write_timeout=timeout_sec)
        except (serial.SerialException, OSError, ValueError) as err:
            reason = _os_reason(err)
            hint = (
                "add your user to the dialout group, or pass another --port"
                if "ermission" in reason
                else "check the board is connected, or pass another --port"
            )
            raise ProjectError(f"cannot open serial port {port}: {reason}; {hint}") from None
        self.port = port
        self._timeout = timeout_sec

    def _port(self) -> Any:
        if self._serial is None:
            raise ProjectError("the serial port is not open; open it before reading or writing")
        return self._serial

    def _set_timeout(self, ser: Any, timeout_sec: float) -> None:
        timeout_sec = max(0.0, timeout_sec)
        if self._timeout != timeout_sec:
            ser.timeout = timeout_sec
            self._timeout = timeout_sec

    def read(self, n: int, timeout_sec: float) -> bytes:
        """Up to `n` bytes, returned as soon as one is there; b"" when nothing came within `timeout_sec`."""
        import serial

        ser = self._port()
        try:
            self._set_timeout(ser, timeout_sec)
            data = ser.read(1)
            if data and n > 1:
                waiting = ser.in_waiting
                if waiting:
                    self._set_timeout(ser, 0.0)
                    data += ser.read(min(n - 1, waiting))
            return bytes(data)
        except (serial.SerialException, OSError) as err:
            raise ProjectError(
                f"reading serial port {self.port} failed: {_os_reason(err)}; check the board is still connected"
            ) from None

    def write(self, data: bytes, timeout_sec: float) -> None:
        """Write all of `data` within `timeout_sec`, or a one-line error (a stalled port never blocks the host)."""
        import serial

        ser = self._port()
        try:
            ser.write_timeout = max(0.001, timeout_sec)
            ser.write(data)
            ser.flush()
        except serial.SerialTimeoutException:
            raise ProjectError(f"writing to serial port {self.port} timed out after {timeout_sec:g} s") from None
        except (serial.SerialException, OSError) as err:
            raise ProjectError(
                f"writing to serial port {self.port} failed: {_os_reason(err)}; check the board is still connected"
            ) from None

    def discard_input(self) -> None:
        """Drop bytes already received (a previous run's output), so the next session starts clean."""
        self._port().reset_input_buffer()

    def close(self) -> None:
        """Close the port; safe to call twice."""
        ser, self._serial = self._serial, None
        if ser is not None:
            try:
                ser.close()
            except Exception:  # closing a vanished device must not hide the error being reported
                pass

    def __enter__(self) -> SerialTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _meaningful_line(*texts: str) -> str:
    """The line of a tool's output that says what went wrong: the last error line, else the last line."""
    lines = [ln.strip() for text in texts for ln in text.splitlines() if ln.strip()]
    boring = ("in procedure", "shutdown command invoked", "** openocd init failed **")
    useful = [ln for ln in lines if not any(ln.lower().startswith(b) for b in boring)]
    errors = [ln for ln in useful if "error" in ln.lower() or "fail" in ln.lower()]
    pick = errors[-1] if errors else (useful[-1] if useful else "no output")
    return pick if len(pick) <= 200 else pick[:197] + "..."


def _run_tool(cmd: list[str], timeout_sec: float) -> tuple[int, str, str]:
    """Run a flash tool in its own process group; on timeout kill the whole group so nothing keeps the pipes."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        errors="replace", start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout_sec)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        raise
    return proc.returncode, out, err


def _tcl_word(path: Path) -> str:
    text = path.as_posix()
    return "{" + text + "}" if any(c in text for c in " \t;$[]\"") else text


def probe_command(tool: str, exe: str, elf: Path, board: Board) -> list[str]:
    """The command line that programs `elf` with `tool` and resets the board so the new firmware runs."""
    if tool == "openocd":
        return [exe, "-f", "interface/stlink.cfg", "-f", board.openocd_target,
                "-c", f"program {_tcl_word(elf)} verify reset exit"]
    # `pyocd flash` resets the target after programming unless --no-reset is given (pyOCD PR #1492).
    return [exe, "flash", "-t", board.pyocd_target, str(elf)]


def flash(elf: Path, board: Board, probe: str | None = None, timeout_sec: float = DEFAULT_FLASH_TIMEOUT_SEC) -> str:
    """Program `elf` into `board` and reset it, with openocd or pyocd (the first on PATH); returns the tool used."""
    elf = Path(elf)
    if probe is not None and probe not in PROBES:
        raise ProjectError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if not elf.is_file():
        raise ProjectError(f"no firmware at {elf}; build the project first")
    tools = [probe] if probe else list(PROBES)
    found = [(t, shutil.which(t)) for t in tools]
    found = [(t, exe) for t, exe in found if exe]
    if not found:
        if probe:
            other = next(t for t in PROBES if t != probe)
            raise ProjectError(f"{probe} is not on PATH; install it ({_INSTALL[probe]}) or pass --probe {other}")
        raise ProjectError(
            f"neither openocd nor pyocd is on PATH; install one ({_INSTALL['openocd']}, or {_INSTALL['pyocd']})"
        )
    tool, exe = found[0]
    cmd = probe_command(tool, str(exe), elf, board)
    try:
        code, out, err = _run_tool(cmd, timeout_sec)
    except subprocess.TimeoutExpired:
        raise ProjectError(
            f"{tool} did not finish flashing {board.key} within {timeout_sec:g} s (killed); "
            f"check the probe's USB cable and that the board is powered, then run again"
        ) from None
    except OSError as e:
        raise ProjectError(f"cannot run {exe}: {e.strerror or e}") from None
    if code != 0:
        raise ProjectError(
            f"{tool} failed to flash {board.key} (exit {code}): {_meaningful_line(err, out)}; "
            f"check the probe connection and --board, then run again"
        )
    return tool


def run_on_device(
    elf: Path,
    board: Board,
    port: str | None = None,
    probe: str | None = None,
    baud: int = DEFAULT_BAUD,
    timeout_sec: float = DEFAULT_RUN_TIMEOUT_SEC,
    flash_timeout_sec: float = DEFAULT_FLASH_TIMEOUT_SEC,
    flasher: Flasher | None = None,
) -> RunRecord:
    """Flash `elf`, reset the board and read its run from the serial port (opened first so nothing is lost)."""
    port = port or find_port()
    flasher = flasher or flash
    transport = SerialTransport()
    transport.open(port, baud, timeout_sec=min(5.0, timeout_sec))
    try:
        transport.discard_input()  # whatever the previous firmware printed before this run
        flasher(Path(elf), board, probe, flash_timeout_sec)
        record = read_session(lambda left: transport.read(4096, left), timeout_sec)
    finally:
        transport.close()
    if record.board != board.key:
        raise ProtocolError(
            f"the device ran firmware built for {record.board}, not {board.key}; check --board and --port, "
            f"then build and flash again"
        )
    if record.runner != "device":
        raise ProtocolError(
            f"the device ran firmware built for the {record.runner} runner; build the project for the device "
            f"and run again"
        )
    return record
