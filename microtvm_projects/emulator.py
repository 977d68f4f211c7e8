"""The emulator runner: QEMU's mps2 machine standing in for the board, its console as a transport.

``mps2-an386`` (Cortex-M4) stands in for the F412, ``mps2-an500`` (Cortex-M7) for the F746 and H743; the
emulator link keeps the board's Flash and SRAM sizes. QEMU runs with ``-icount shift=S`` (S from the
project), so the firmware's timer readings give the exact number of instructions executed (see
template/src/board_qemu.c); semihosting carries the console (QEMU writes it to its stderr) and the exit code.
A QEMU that hangs or dies is stopped at the timeout and reported in one line.
"""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import time
from pathlib import Path

from microtvm_projects.boards import Board
from microtvm_projects.errors import ProjectError

QEMU = "qemu-system-arm"


def qemu_command(board: Board, elf: Path, icount_shift: int) -> list[str]:
    """The QEMU command line that runs ``elf`` for ``board``."""
    return [QEMU, "-M", board.qemu_machine, "-nographic", "-monitor", "none", "-serial", "none",
            "-semihosting-config", "enable=on,target=native", "-icount", f"shift={icount_shift}",
            "-kernel", str(elf)]


class QemuTransport:
    """QEMU as a byte stream: open starts it, read returns what the firmware printed, close stops it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.command: list[str] = []

    def open(self, board: Board, elf: Path, icount_shift: int) -> None:
        """Start QEMU on ``elf``; a missing QEMU or ELF is a one-line error."""
        if shutil.which(QEMU) is None:
            raise ProjectError(f"{QEMU} not found; install qemu-system-arm (`make setup` does it)")
        if not Path(elf).is_file():
            raise ProjectError(f"{elf}: no firmware; build the project first")
        self.command = qemu_command(board, Path(elf), icount_shift)
        # the console goes to QEMU's stderr: read it; stdout carries only QEMU's own messages
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)

    def read(self, n: int, timeout_sec: float) -> bytes:
        """Up to ``n`` bytes, waiting at most ``timeout_sec``; b"" on timeout or when QEMU has exited."""
        if self.proc is None or self.proc.stderr is None:
            raise ProjectError("the emulator is not running: open the transport first")
        fd = self.proc.stderr.fileno()
        ready, _, _ = select.select([fd], [], [], max(0.0, timeout_sec))
        if not ready:
            return b""
        return os.read(fd, n)

    def write(self, data: bytes, timeout_sec: float) -> None:
        """The firmware reads no input: writing is refused."""
        raise ProjectError("the emulator's console is output only (the input is compiled into the firmware)")

    def exit_code(self, timeout_sec: float = 5.0) -> int | None:
        """QEMU's exit status (the firmware's semihosting exit code), or None if it is still running."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=timeout_sec)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop QEMU (its whole process group) if it still runs, and release the pipe."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5.0
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
