"""The zoo's names and how each becomes a NetSpec."""

from __future__ import annotations

from collections.abc import Callable

from tvm_patch.errors import TvmPatchError
from tvm_patch.zoo.mbv2 import mobilenet_v2
from tvm_patch.zoo.mcunet import CONFIGS, mcunet_spec
from tvm_patch.zoo.mnasnet import mnasnet_a1
from tvm_patch.zoo.redistribute import redistribute
from tvm_patch.zoo.spec import NetSpec

RD_STAGE_BLOCKS = 5  # the MbV2 stage MCUNetV2 redistributes: stem + 4 blocks, output 28x28

BUILDERS: dict[str, Callable[[], NetSpec]] = {
    "mbv2-w1.0-r224": lambda: mobilenet_v2("mbv2-w1.0-r224", 1.0, 224),
    "mnasnet-a1-r224": lambda: mnasnet_a1("mnasnet-a1-r224", 224),
    # MCUNetV2's MbV2-RD: the receptive field of MbV2's 5-block patch stage moved after it (a 4-block stage)
    "mbv2-rd-w1.0-r224": lambda: redistribute(mobilenet_v2("mbv2-w1.0-r224", 1.0, 224), RD_STAGE_BLOCKS,
                                              "mbv2-rd-w1.0-r224")[0],
    **{name: (lambda name=name: mcunet_spec(name)) for name in CONFIGS},
}


def spec(name: str) -> NetSpec:
    """The architecture of zoo model `name`; TvmPatchError listing the known names if there is none."""
    if name not in BUILDERS:
        raise TvmPatchError(f"unknown zoo model {name!r}; known: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name]()
