"""MCUNet model-zoo configs (ProxylessNAS JSON: first_conv, blocks, feature_mix_layer, classifier) to NetSpec,
and back (`to_config`): the zoo's JSON spec format, which `tvm-patch search` writes and every MODEL argument
accepts as a file path.

The zoo's own JSON files are read at run time from the shared models folder (`tvm_patch.paths.shared_models_dir`).
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
META = "tvm_patch"
"""The config entry holding this project's additions (model name, family, variant, a search's plan)."""
VARIANTS = ("float32", "int8")

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


def parse_config(cfg: dict[str, Any], name: str, where: str) -> NetSpec:
    """A ProxylessNAS/MCUNet JSON config (already parsed) as the NetSpec called `name`; ZeroLayer blocks vanish.

    `where` names the source in error messages."""
    try:
        blocks = []
        for i, entry in enumerate(cfg["blocks"]):
            block = _block(entry, f"{where} block {i}")
            if block is not None:
                blocks.append(block)
        head = cfg.get("feature_mix_layer")
        classifier = cfg["classifier"]
        stem = _conv(cfg["first_conv"], where)
        resolution = int(cfg["resolution"])
        num_classes = classifier["out_features"]
    except (KeyError, TypeError, ValueError) as e:
        raise TvmPatchError(f"{where}: not a ProxylessNAS/MCUNet config ({type(e).__name__}: {e}); it needs "
                            "first_conv, blocks, classifier and resolution") from None
    width = re.search(r"-w([0-9.]+)-", name)
    family = "MCUNet (TinyNAS)" if name.startswith("mcunet") else \
        "MobileNetV2 (MCUNet zoo)" if name.startswith("mbv2") else "ProxylessNAS (MCUNet zoo)"
    meta = cfg.get(META) or {}
    family = meta.get("family", family)
    width = meta.get("width", float(width.group(1)) if width else None)
    net = NetSpec(name=name, family=family, resolution=resolution, stem=stem,
                  blocks=tuple(blocks), head=_conv(head, where) if head else None,
                  num_classes=num_classes, width=width)
    if net.feature_ch != classifier["in_features"]:
        raise TvmPatchError(f"{where}: classifier expects {classifier['in_features']} features, "
                            f"network gives {net.feature_ch}")
    return net


def mcunet_spec(name: str) -> NetSpec:
    """Parse the config of zoo model `name` (a key of CONFIGS) into a NetSpec."""
    path = config_path(name)
    return parse_config(json.loads(path.read_text()), name, path.name)


def _conv_config(conv: ConvSpec) -> dict[str, Any]:
    return {"name": "ConvLayer", "kernel_size": conv.kernel, "stride": conv.stride, "dilation": 1, "groups": 1,
            "bias": False, "has_shuffle": False, "in_channels": conv.in_ch, "out_channels": conv.out_ch,
            "use_bn": True, "act_func": conv.act, "dropout_rate": 0, "ops_order": "weight_bn_act"}


def _block_config(block: BlockSpec, where: str) -> dict[str, Any]:
    if block.se_ch or block.act not in ("relu6", "relu"):
        raise TvmPatchError(f"{where}: squeeze-excite blocks and {block.act} have no MCUNet config form")
    ratio = block.mid_ch / block.in_ch if block.expand else 1
    conv = {"name": "MBInvertedConvLayer", "in_channels": block.in_ch, "out_channels": block.out_ch,
            "kernel_size": block.kernel, "stride": block.stride,
            "expand_ratio": int(ratio) if float(ratio).is_integer() else ratio,
            "mid_channels": block.mid_ch if block.expand else None, "act_func": block.act, "use_se": False}
    if block.expand and block.mid_ch == block.in_ch:
        raise TvmPatchError(f"{where}: an expansion to as many channels as the input has no MCUNet config form")
    shortcut = {"name": "IdentityLayer", "in_channels": [block.in_ch], "out_channels": [block.out_ch],
                "use_bn": False, "act_func": None, "dropout_rate": 0, "ops_order": "weight_bn_act"}
    return {"name": "MobileInvertedResidualBlock", "mobile_inverted_conv": conv,
            "shortcut": shortcut if block.residual else None}


def to_config(net: NetSpec, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """`net` as a ProxylessNAS/MCUNet JSON config (what `parse_config` reads back to an equal NetSpec), with
    this project's extra entries under META (the model name, variant, and whatever `meta` adds)."""
    return {
        "name": "ProxylessNASNets",
        "bn": {"momentum": 0.1, "eps": 1e-05, "ws_eps": None},
        "first_conv": _conv_config(net.stem),
        "blocks": [_block_config(b, f"{net.name} block {i}") for i, b in enumerate(net.blocks)],
        "feature_mix_layer": _conv_config(net.head) if net.head is not None else None,
        "classifier": {"name": "LinearLayer", "in_features": net.feature_ch, "out_features": net.num_classes,
                       "bias": True, "use_bn": False, "act_func": None, "dropout_rate": 0,
                       "ops_order": "weight_bn_act"},
        "resolution": net.resolution,
        META: {"name": net.name, "family": net.family, "width": net.width, **(meta or {})},
    }


def spec_file(path: str | Path) -> tuple[NetSpec, bool]:
    """(NetSpec, int8?) of a config file: a zoo config or one `to_config` wrote (`tvm-patch search`'s
    best.json). The model is named by META's "name" (its weights are seeded from it), else by the file
    stem; META's "variant" "int8" asks for the int8 QDQ model."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except OSError as e:
        raise TvmPatchError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise TvmPatchError(f"{path}: not valid JSON ({e}); is the file complete?") from None
    if not isinstance(cfg, dict):
        raise TvmPatchError(f"{path}: not a ProxylessNAS/MCUNet config (a JSON object is expected)")
    meta = cfg.get(META) or {}
    variant = meta.get("variant", "float32")
    if variant not in VARIANTS:
        raise TvmPatchError(f"{path}: {META}.variant {variant!r} is unknown; use one of {', '.join(VARIANTS)}")
    name = str(meta.get("name") or path.stem)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise TvmPatchError(f"{path}: model name {name!r} must be letters, digits, '.', '_' or '-'")
    return parse_config(cfg, name, path.name), variant == "int8"
