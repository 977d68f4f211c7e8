"""The Relax passes of tvm-patch (as TVM keeps `relax/transform`); `relay_passes` is their public face.

- `lower_to_integer`: LowerToInteger, int8 dequantize -> float op -> quantize chains to integer arithmetic;
- `patch_stage`: PatchStage, a CNN's first stage as one patch-based TIR loop nest.

This ``__init__`` imports nothing, so the library below the passes (the patch stage reads integer-lowered
modules) can import `tvm_patch.transform.lower_to_integer` without loading `patch_stage`.
"""
