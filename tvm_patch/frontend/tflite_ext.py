"""TFLite import (placeholder until the extended converter lands): TVM's frontend as it is."""

from __future__ import annotations

import tvm

from tvm_patch.errors import TvmPatchError


def tflite_to_relax(data: bytes, where: str) -> tvm.IRModule:
    """Parse a .tflite flatbuffer and import it with TVM's TFLite frontend."""
    import tflite
    from tvm.relax.frontend.tflite import from_tflite

    if len(data) < 8 or data[4:8] != b"TFL3":
        raise TvmPatchError(f"{where}: not a TFLite flatbuffer (no TFL3 identifier); is the file complete?")
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        return from_tflite(model)
    except Exception as e:
        raise TvmPatchError(f"{where}: TVM could not import the model: {str(e).strip().splitlines()[-1]}") from None
