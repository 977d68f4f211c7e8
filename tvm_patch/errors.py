"""The one error type the user sees: a single line saying what is wrong, where, and what to do."""

from __future__ import annotations


class TvmPatchError(Exception):
    """A problem with the user's input (model, option, environment) that the CLI reports as one line, exit 2."""

    exit_code = 2


class UnsupportedOpError(TvmPatchError):
    """A model contains an operator this project cannot handle; the message names the op and the node."""
