"""The error a board project reports to its user: one line saying what is wrong, where, and what to do."""

from __future__ import annotations


class ProjectError(Exception):
    """A problem with a board project (options, toolchain, link, run) reported as one line with exit code 2."""

    exit_code = 2

    def one_line(self) -> str:
        """The first non-empty line of the message."""
        lines = [ln for ln in str(self).splitlines() if ln.strip()]
        return lines[0].strip() if lines else type(self).__name__


class ProtocolError(ProjectError):
    """The firmware's output broke the line protocol (a reset mid-run, a torn line, garbage, a bad checksum)."""


class FitError(ProjectError):
    """The firmware does not fit the board: the message names the region and the bytes; ``flash_over`` the Flash
    bytes too many where Flash is what overflows (at least that many, from the export's figures before a link)."""

    def __init__(self, message: str, flash_over: int | None = None) -> None:
        super().__init__(message)
        self.flash_over = flash_over
