"""Capture C-level stderr (file descriptor 2): TVM's and TFLite Micro's native code write there directly."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["captured_stderr"]


@contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Redirect fd 2 to a temporary file for the block; the yielded list receives the text afterwards."""
    out: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield out
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                tmp.seek(0)
                out.append(tmp.read().decode(errors="replace"))
    finally:
        os.close(saved)
