"""MCUNet model-zoo configs (ProxylessNAS JSON: first_conv, blocks, feature_mix_layer, classifier) to NetSpec.

The JSON files are read at run time from the shared models folder (`tvm_patch.paths.shared_models_dir`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tvm_patch.errors import TvmPatchError
from tvm_patch.paths import shared_models_dir
from tvm_patch.zoo.spec import BlockSpec, ConvSpec, NetSpec

ENV_VAR = "TVM_PATCH_SHARED_MODELS"

# zoo name -> config file stem in <shared models>/mcunet/
CONFIGS = {
    "mcunet-in0": "mcunet-10fps_imagenet",
    "mcunet-in1": "mcunet-5fps_imagenet",
    "mcunet-in2": "mcunet-256kb-1mb_imagenet",
    "mcunet-in3": "mcunet-320kb-1mb_imagenet",
    "mcunet-in4": "mcunet-512kb-2mb_imagenet",
    "mbv2-w0.3-r80": "mbv2-w0.3-r80_imagenet",
    "mbv2-w0.35-r144": "mbv2-w0.35-r144_imagenet",
    "proxyless-w0.25-r112": "proxyless-w0.25-r112_imagenet",
    "proxyless-w0.3-r176": "proxyless-w0.3-r176_imagenet",
    "proxyless-mobile": "proxyless_mobile",
}


def config_path(name: str) -> Path:
    """Path of the JSON config behind zoo model `name`; a TvmPatchError if it is not there."""
    path = shared_models_dir() / "mcunet" / f"{CONFIGS[name]}.json"  # raises if the folder is missing
    if not path.is_file():
        raise TvmPatchError(f"zoo model {name!r} needs {path}, which does not exist; "
                            f"set {ENV_VAR} to the folder that holds mcunet/{path.name}")
    return path


def _conv(layer: dict[str, Any], where: str) -> ConvSpec:
    if layer.get("name") != "ConvLayer" or layer.get("groups", 1) != 1 or layer.get("dilation", 1) != 1:
        raise TvmPatchError(f"{where}: only plain ConvLayer (groups 1, dilation 1) is supported, got {layer}")
    return ConvSpec(layer["in_channels"], layer["out_channels"], layer["kernel_size"], layer["stride"],
                    act=_act(layer.get("act_func"), where))


def _act(act: str | None, where: str) -> str:
    # ProxylessNAS's MBInvertedConvLayer defaults act_func to relu6; older configs omit it.
    act = act or "relu6"
    if act not in ("relu6", "relu"):
        raise TvmPatchError(f"{where}: activation {act!r} is not supported (relu6, relu)")
    return act


def _block(entry: dict[str, Any], where: str) -> BlockSpec | None:
    conv = entry["mobile_inverted_conv"]
    shortcut = entry.get("shortcut")
    residual = bool(shortcut) and shortcut.get("name") == "IdentityLayer"
    if conv["name"] == "ZeroLayer":
        if not residual:
            raise TvmPatchError(f"{where}: a ZeroLayer block without identity shortcut outputs zeros")
        return None  # the block is the identity
    if conv["name"] != "MBInvertedConvLayer":
        raise TvmPatchError(f"{where}: block type {conv['name']!r} is not supported")
    if conv.get("use_se"):
        raise TvmPatchError(f"{where}: squeeze-excite in MCUNet configs is not supported")
    in_ch, ratio = conv["in_channels"], conv["expand_ratio"]
    mid = conv.get("mid_channels") or round(in_ch * ratio)
    return BlockSpec(in_ch, mid if ratio != 1 else in_ch, conv["out_channels"], conv["kernel_size"],
                     conv["stride"], expand=ratio != 1, residual=residual, act=_act(conv.get("act_func"), where))


def mcunet_spec(name: str) -> NetSpec:
    """Parse the config of zoo model `name` (a key of CONFIGS) into a NetSpec; ZeroLayer blocks vanish."""
    path = config_path(name)
    cfg = json.loads(path.read_text())
    where = f"{path.name}"
    blocks = []
    for i, entry in enumerate(cfg["blocks"]):
        block = _block(entry, f"{where} block {i}")
        if block is not None:
            blocks.append(block)
    head = cfg.get("feature_mix_layer")
    classifier = cfg["classifier"]
    width = re.search(r"-w([0-9.]+)-", name)
    family = "MCUNet (TinyNAS)" if name.startswith("mcunet") else \
        "MobileNetV2 (MCUNet zoo)" if name.startswith("mbv2") else "ProxylessNAS (MCUNet zoo)"
    net = NetSpec(name=name, family=family, resolution=cfg["resolution"], stem=_conv(cfg["first_conv"], where),
                  blocks=tuple(blocks), head=_conv(head, where) if head else None,
                  num_classes=classifier["out_features"], width=float(width.group(1)) if width else None)
    if net.feature_ch != classifier["in_features"]:
        raise TvmPatchError(f"{where}: classifier expects {classifier['in_features']} features, "
                            f"network gives {net.feature_ch}")
    return net
