"""The one error type the user sees: a single line saying what is wrong, where, and what to do."""

from __future__ import annotations

import tvm_ffi

# What TVM raises when a schedule primitive or a pass refuses (tvm.error.* and ScheduleError derive from
# RuntimeError; argument checks raise ValueError or TypeError): caught where a refusal means "keep the other form".
TVM_ERRORS = (RuntimeError, ValueError, TypeError)

# Registered with tvm_ffi so that an error raised inside a TVM pass keeps its type when it crosses the FFI
# (otherwise it comes back as a RuntimeError).
@tvm_ffi.register_error
class TvmPatchError(Exception):
    """A problem with the user's input (model, option, environment) that the CLI reports as one line, exit 2."""

    exit_code = 2

    def one_line(self) -> str:
        """The message without the C++/Python frames TVM may append when the error crossed the FFI."""
        lines = [ln for ln in str(self).splitlines() if ln.strip()]
        return lines[0].strip() if lines else type(self).__name__


@tvm_ffi.register_error
class UnsupportedOpError(TvmPatchError):
    """A model contains an operator this project cannot handle; the message names the op and the node."""
