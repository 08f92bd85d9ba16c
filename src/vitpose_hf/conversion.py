"""Checkpoint conversion: official mmpose `.pth` files and transformers' `vitpose` checkpoints to ours, and back.

Pure state-dict and config functions (like timm's `checkpoint_filter_fn`); the command line is in `convert.py`.
Our keys follow the official names with one head per dataset:
`backbone.{patch_embed.proj, pos_embed, blocks.i.*, last_norm}` and `heads.{d}.{deconv_layers.{0,1,3,4}, final_layer}`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
from typing import Any

import torch

from .configuration_vitpose_hf import PRESET_SIZES, ViTPoseConfig, preset_size_key
from .keypoint_metadata import VITPOSE_PLUS_DATASETS, get_dataset_info, infer_flip_pairs, match_builtin_dataset

logger = logging.getLogger(__name__)

# keypoint counts of the official heads, in checkpoint order -> dataset names
HEAD_LAYOUTS: dict[tuple[int, ...], list[str]] = {
    (17,): ["coco"],
    (14,): ["aic"],
    (16,): ["mpii"],
    (133,): ["wholebody"],
    (17, 14, 16): ["coco", "aic", "mpii"],  # ViTPose v1 multi-dataset
    (17, 14, 16, 14): ["coco", "aic", "mpii", "crowdpose"],
    (17, 14, 16, 17, 17, 133): list(VITPOSE_PLUS_DATASETS),  # ViTPose++
}
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder", "proxies")


# ---------------------------------------------------------------------------------------------------------------
# official mmpose checkpoints
# ---------------------------------------------------------------------------------------------------------------


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official `.pth`: an mmcv checkpoint dict with `state_dict`, or a bare state dict."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ValueError(f"{path} is neither an mmcv checkpoint with 'state_dict' nor a bare state dict of tensors")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def _grid_from_tokens(num_tokens: int) -> tuple[int, int]:
    """Token grid (h, w) of a 4:3 (height:width) input, the shape of every official checkpoint."""
    width = round(math.sqrt(num_tokens * 3 / 4))
    if width == 0 or num_tokens % width:
        raise ValueError(f"cannot infer the input size from {num_tokens} position slots; pass image_size")
    return num_tokens // width, width


def infer_official_config(state_dict: dict[str, torch.Tensor], **overrides: Any) -> dict[str, Any]:
    """ViTPoseConfig arguments read from the tensors of a state dict in our naming (see `convert_official_state_dict`).

    Width gives the heads (as in `PRESET_SIZES`), block keys the depth, head keys the decoder and
    keypoint counts, expert keys the experts and part_features. `overrides` win over what is read.
    """
    sd = state_dict
    if "backbone.pos_embed" not in sd:
        raise ValueError("not a ViTPose checkpoint: no 'backbone.pos_embed'")
    hidden = sd["backbone.pos_embed"].shape[-1]
    patch = sd["backbone.patch_embed.proj.weight"].shape[-1]
    depth = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"backbone\.blocks\.(\d+)\.", k)))
    grid = _grid_from_tokens(sd["backbone.pos_embed"].shape[1] - 1)
    # with padding 2 a 16x12 grid comes from a 256x192 input
    kwargs: dict[str, Any] = {
        "hidden_size": hidden,
        "num_hidden_layers": depth,
        "patch_size": patch,
        "image_size": (grid[0] * patch, grid[1] * patch),
        "mlp_ratio": sd["backbone.blocks.0.mlp.fc1.weight"].shape[0] / hidden,
        "qkv_bias": "backbone.blocks.0.attn.qkv.bias" in sd,
    }
    heads = {p.num_attention_heads for p in PRESET_SIZES.values() if p.hidden_size == hidden}
    if len(heads) == 1:
        kwargs["num_attention_heads"] = heads.pop()
    elif "num_attention_heads" not in overrides:
        raise ValueError(f"no official model has width {hidden}: pass num_attention_heads (or --preset)")
    size = preset_size_key(hidden, depth)
    if size is not None:
        kwargs["drop_path_rate"] = PRESET_SIZES[size].drop_path_rate
    experts = sorted({int(m.group(1)) for k in sd if (m := re.match(r"backbone\.blocks\.0\.mlp\.experts\.(\d+)\.weight", k))})
    fc2_rows = sd["backbone.blocks.0.mlp.fc2.weight"].shape[0]
    if experts and fc2_rows < hidden:
        kwargs.update(num_experts=len(experts), part_features=sd["backbone.blocks.0.mlp.experts.0.weight"].shape[0])
    classic = any(k.endswith("deconv_layers.0.weight") for k in sd)
    kwargs["decoder"] = "classic" if classic else "simple"
    if classic:
        kwargs["deconv_channels"] = next(v.shape[1] for k, v in sd.items() if k.endswith("deconv_layers.0.weight"))
    counts = tuple(sd[f"heads.{i}.final_layer.weight"].shape[0] for i in range(_count_heads(sd)))
    if "datasets" not in overrides:
        if counts not in HEAD_LAYOUTS:
            raise ValueError(f"heads with {list(counts)} keypoints match no official layout: pass datasets=[...]")
        kwargs["datasets"] = HEAD_LAYOUTS[counts]
    if kwargs.get("num_experts", 1) > 1 and len(kwargs.get("datasets", overrides.get("datasets", []))) not in (1, kwargs["num_experts"]):
        raise ValueError(f"{kwargs['num_experts']} experts but {len(counts)} heads")
    kwargs.update(overrides)
    return kwargs


def _count_heads(sd: dict[str, torch.Tensor]) -> int:
    heads = {int(m.group(1)) for k in sd if (m := re.match(r"heads\.(\d+)\.", k))}
    if heads != set(range(len(heads))) or not heads:
        raise ValueError(f"head indices must be 0..n-1, found {sorted(heads)}")
    return len(heads)


def convert_official_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official mmpose keys -> ours. Unknown keys are an error that names them.

    - `keypoint_head.*` -> `heads.0.*`; `associate_keypoint_heads.{i}.*` -> `heads.{i+1}.*`.
    - `backbone.cls_token` is dropped: some released checkpoints carry it, but no model uses it.
    - Files written by the official `tools/model_split.py` keep a dense fc2 next to leftover experts and
      associate heads; those leftovers are dropped (they do not belong to the split model).
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    hidden = sd["backbone.pos_embed"].shape[-1] if "backbone.pos_embed" in sd else None
    dense_fc2 = hidden is not None and sd.get("backbone.blocks.0.mlp.fc2.weight", torch.empty(0)).shape[:1] == (hidden,)
    split_file = dense_fc2 and any(".mlp.experts." in k for k in sd)
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key == "backbone.cls_token":
            continue
        if split_file and (".mlp.experts." in key or key.startswith("associate_keypoint_heads.")):
            continue
        if key.startswith("backbone."):
            out[key] = value
        elif key.startswith("keypoint_head."):
            out["heads.0." + key[len("keypoint_head.") :]] = value
        elif m := re.match(r"associate_keypoint_heads\.(\d+)\.(.*)", key):
            out[f"heads.{int(m.group(1)) + 1}.{m.group(2)}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"unexpected keys in the official checkpoint: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}")
    if split_file:
        logger.info("dense split checkpoint: dropped leftover experts and associate heads")
    return out


# ---------------------------------------------------------------------------------------------------------------
# transformers' `vitpose` checkpoints
# ---------------------------------------------------------------------------------------------------------------

_HF_HEAD = {"deconv1": "deconv_layers.0", "batchnorm1": "deconv_layers.1", "deconv2": "deconv_layers.3", "batchnorm2": "deconv_layers.4", "conv": "final_layer"}
_HF_BLOCK = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj"}
_OURS_TO_HF_HEAD = {ours: hf for hf, ours in _HF_HEAD.items()}
_OURS_TO_HF_BLOCK = {ours: hf for hf, ours in _HF_BLOCK.items()}


def convert_transformers_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `VitPoseForPoseEstimation` keys -> ours (q/k/v fused back into qkv, rows [q | k | v])."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for key, value in state_dict.items():
        if key == "backbone.embeddings.position_embeddings":
            out["backbone.pos_embed"] = value
        elif key.startswith("backbone.embeddings.patch_embeddings.projection."):
            out["backbone.patch_embed.proj." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("backbone.layernorm."):
            out["backbone.last_norm." + key.rsplit(".", 1)[1]] = value
        elif m := re.match(r"backbone\.encoder\.layer\.(\d+)\.(.*)\.(\w+)$", key):
            layer, module, param = m.groups()
            prefix = f"backbone.blocks.{layer}."
            if q := re.match(r"attention\.attention\.(query|key|value)$", module):
                qkv.setdefault((prefix, param), {})[q.group(1)] = value
            elif module in _HF_BLOCK:
                out[f"{prefix}{_HF_BLOCK[module]}.{param}"] = value
            elif module.startswith("mlp."):
                out[f"{prefix}{module}.{param}"] = value
            else:
                unknown.append(key)
        elif m := re.match(r"head\.(\w+)\.(\w+)$", key):
            if m.group(1) not in _HF_HEAD:
                unknown.append(key)
            else:
                out[f"heads.0.{_HF_HEAD[m.group(1)]}.{m.group(2)}"] = value
        else:
            unknown.append(key)
    for (prefix, param), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ValueError(f"incomplete query/key/value in {prefix}: has {sorted(parts)}")
        out[f"{prefix}attn.qkv.{param}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    if unknown:
        raise ValueError(f"unexpected keys in the transformers checkpoint: {unknown[:10]}")
    return out


_GENERIC_LABEL = re.compile(r"LABEL_\d+")


def _keypoint_names(config_dict: dict[str, Any], num_keypoints: int) -> list[str] | None:
    """Keypoint names from `id2label`, or None where it holds no usable names (transformers' `LABEL_i` defaults)."""
    id2label = config_dict.get("id2label") or {}
    names = [id2label.get(str(i), id2label.get(i)) for i in range(num_keypoints)]
    if len(id2label) != num_keypoints or not all(isinstance(n, str) and n.strip() for n in names):
        return None
    if all(_GENERIC_LABEL.fullmatch(n) for n in names) or len(set(names)) != len(names):
        return None
    return names


def layout_from_id2label(config_dict: dict[str, Any], num_keypoints: int, source: str | None = None) -> str | dict:
    """Keypoint layout of a transformers `vitpose` checkpoint, whose config holds only `id2label` and `edges`.

    - Names matching a built-in layout (any case / spacing, `L_Eye` = `left_eye`) give that layout, with its
      flip pairs, OKS sigmas and UDP setting.
    - Other names give a custom layout with flip pairs inferred from left/right names and `edges` as skeleton.
    - No names: 17 keypoints are taken as COCO (every released transformers checkpoint has the COCO head),
      other counts get `keypoint_i` names.
    A warning names the checkpoint where that is a guess, or where no flip pairs were found (the flip test then
    averages the mirrored heatmaps without swapping any keypoint).
    """
    where = f"transformers checkpoint {source}" if source else "transformers checkpoint"
    names = _keypoint_names(config_dict, num_keypoints)
    if names is not None and (builtin := match_builtin_dataset(names)) is not None:
        return builtin
    if names is None and num_keypoints == 17:
        logger.warning("%s has no keypoint names in id2label; assuming the COCO-17 layout", where)
        return "coco"
    skeleton = []
    for edge in config_dict.get("edges") or []:
        if not isinstance(edge, (list, tuple)) or len(edge) != 2:
            continue
        a, b = (int(v) for v in edge)
        if 0 <= a < num_keypoints and 0 <= b < num_keypoints and a != b and {a, b} not in map(set, skeleton):
            skeleton.append([a, b])
    layout = {
        "name": "custom",
        "keypoint_names": names or [f"keypoint_{i}" for i in range(num_keypoints)],
        "flip_pairs": infer_flip_pairs(names) if names else [],
        "skeleton": skeleton,
    }
    if not layout["flip_pairs"]:
        logger.warning(
            "%s: no left/right keypoint pairs could be found in its %d keypoint names, so the flip test will not "
            "swap any keypoints; if the layout has mirrored keypoints, name them left_*/right_* in id2label or "
            "set flip_pairs in the converted config.json",
            where, num_keypoints,
        )
    return get_dataset_info(layout)


def transformers_config_to_ours(
    config_dict: dict[str, Any], state_dict: dict[str, torch.Tensor], source: str | None = None
) -> dict[str, Any]:
    """ViTPoseConfig arguments for a transformers `vitpose` config (plus its converted state dict, ours).

    The keypoint layout comes from `id2label` (see `layout_from_id2label`); `source` names the checkpoint in warnings.
    """
    backbone = dict(config_dict.get("backbone_config") or {})
    patch = backbone.get("patch_size", 16)
    patch = patch[0] if isinstance(patch, (list, tuple)) else patch
    num_keypoints = state_dict["heads.0.final_layer.weight"].shape[0]
    datasets = [layout_from_id2label(config_dict, num_keypoints, source)]
    num_experts = backbone.get("num_experts", 1)
    kwargs = {
        "image_size": tuple(backbone.get("image_size", (256, 192))),
        "patch_size": patch,
        "num_channels": backbone.get("num_channels", 3),
        "hidden_size": backbone.get("hidden_size", 768),
        "num_hidden_layers": backbone.get("num_hidden_layers", 12),
        "num_attention_heads": backbone.get("num_attention_heads", 12),
        "mlp_ratio": backbone.get("mlp_ratio", 4),
        "hidden_act": backbone.get("hidden_act", "gelu"),
        # transformers' converted checkpoints run with its default 1e-12, not the official 1e-6
        "layer_norm_eps": backbone.get("layer_norm_eps", 1e-12),
        "qkv_bias": backbone.get("qkv_bias", True),
        "num_experts": num_experts,
        "part_features": backbone.get("part_features", 0) if num_experts > 1 else 0,
        "decoder": "simple" if config_dict.get("use_simple_decoder", True) else "classic",
        "upsample_factor": config_dict.get("scale_factor", 4),
        "datasets": datasets,
    }
    out_indices = backbone.get("out_indices") or [kwargs["num_hidden_layers"]]
    if list(out_indices)[-1] != kwargs["num_hidden_layers"]:
        raise ValueError(f"transformers checkpoint reads layer {out_indices}, not the last one; not supported")
    return kwargs


def ours_to_transformers(config: ViTPoseConfig, state_dict: dict[str, torch.Tensor], dataset: int | str = 0) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Export to transformers' `vitpose` format: one head (`dataset`), experts kept. Raises where it cannot represent us."""
    if config.patch_padding != 2:
        raise ValueError("transformers' VitPose hard-codes patch padding 2")
    if config.decoder == "classic" and config.deconv_channels != 256:
        raise ValueError("transformers' classic decoder hard-codes 256 deconvolution channels")
    k = config.dataset_to_index(dataset)
    info = config.datasets[k]
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("heads."):
            m = re.match(r"heads\.(\d+)\.(.*)\.(\w+)$", key)
            if int(m.group(1)) != k:
                continue
            module = _OURS_TO_HF_HEAD[m.group(2)]
            out[f"head.{module}.{m.group(3)}"] = value
        elif key == "backbone.pos_embed":
            out["backbone.embeddings.position_embeddings"] = value
        elif key.startswith("backbone.patch_embed.proj."):
            out["backbone.embeddings.patch_embeddings.projection." + key.rsplit(".", 1)[1]] = value
        elif key.startswith("backbone.last_norm."):
            out["backbone.layernorm." + key.rsplit(".", 1)[1]] = value
        else:
            m = re.match(r"backbone\.blocks\.(\d+)\.(.*)\.(\w+)$", key)
            layer, module, param = m.groups()
            prefix = f"backbone.encoder.layer.{layer}."
            if module == "attn.qkv":
                for name, chunk in zip(("query", "key", "value"), value.chunk(3)):
                    out[f"{prefix}attention.attention.{name}.{param}"] = chunk.clone()
            else:
                out[f"{prefix}{_OURS_TO_HF_BLOCK.get(module, module)}.{param}"] = value
    depth = config.num_hidden_layers
    config_dict = {
        "model_type": "vitpose",
        "architectures": ["VitPoseForPoseEstimation"],
        "backbone_config": {
            "model_type": "vitpose_backbone",
            "image_size": list(config.image_size),
            "patch_size": [config.patch_size, config.patch_size],
            "num_channels": config.num_channels,
            "hidden_size": config.hidden_size,
            "num_hidden_layers": depth,
            "num_attention_heads": config.num_attention_heads,
            "mlp_ratio": int(config.mlp_ratio),
            "num_experts": config.num_experts,
            "part_features": config.part_features if config.num_experts > 1 else 0,
            "hidden_act": config.hidden_act,
            "layer_norm_eps": config.layer_norm_eps,
            "qkv_bias": config.qkv_bias,
            "out_indices": [depth],
            "out_features": [f"stage{depth}"],
        },
        "use_simple_decoder": config.decoder == "simple",
        "scale_factor": config.upsample_factor,
        "id2label": {str(i): n for i, n in enumerate(info["keypoint_names"])},
        "label2id": {n: i for i, n in enumerate(info["keypoint_names"])},
        "edges": [list(e) for e in info.get("skeleton", [])],
    }
    return config_dict, out


# ---------------------------------------------------------------------------------------------------------------
# loading transformers checkpoints through from_pretrained
# ---------------------------------------------------------------------------------------------------------------


def _hub_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in HUB_KWARGS if k in kwargs}


def read_config_dict(path: str | os.PathLike, **kwargs: Any) -> dict[str, Any] | None:
    """config.json of a local folder or Hub repo, or None when there is none."""
    from transformers import PretrainedConfig

    local = os.path.join(str(path), kwargs.get("subfolder", "") or "", "config.json")
    if os.path.isfile(local):
        with open(local, encoding="utf-8") as f:
            return json.load(f)
    if os.path.isdir(str(path)):
        return None
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(str(path), **_hub_kwargs(kwargs))
    except OSError:
        return None  # from_pretrained will raise its own, clearer error
    return config_dict


def is_transformers_vitpose(path: str | os.PathLike, **kwargs: Any) -> bool:
    config_dict = read_config_dict(path, **kwargs)
    return bool(config_dict) and config_dict.get("model_type") == "vitpose"


def load_state_dict_files(path: str | os.PathLike, **kwargs: Any) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder or Hub repo: model.safetensors, a sharded index, or pytorch_model.bin."""
    from safetensors.torch import load_file
    from transformers.utils import cached_file

    hub = _hub_kwargs(kwargs)

    def fetch(name: str) -> str | None:
        return cached_file(str(path), name, _raise_exceptions_for_missing_entries=False, **hub)

    if file := fetch("model.safetensors"):
        return load_file(file)
    if index := fetch("model.safetensors.index.json"):
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(fetch(shard)))
        return state
    if file := fetch("pytorch_model.bin"):
        return torch.load(file, map_location="cpu", weights_only=True)
    raise OSError(f"no model.safetensors, sharded index or pytorch_model.bin found in {path}")


def load_transformers_vitpose(cls: type, path: str | os.PathLike, *model_args: Any, strict: bool = True, **kwargs: Any):
    """Convert a transformers `vitpose` checkpoint on load and hand it to our `from_pretrained`."""
    config_dict = read_config_dict(path, **kwargs)
    state = convert_transformers_state_dict(load_state_dict_files(path, **kwargs))
    config = ViTPoseConfig(**transformers_config_to_ours(config_dict, state, source=str(path)))
    rest = {k: v for k, v in kwargs.items() if k not in HUB_KWARGS}
    with tempfile.TemporaryDirectory() as tmp:
        save_converted(config, state, tmp)
        loaded = cls.from_pretrained(tmp, *model_args, strict=strict, **rest)
    model = loaded[0] if isinstance(loaded, tuple) else loaded
    model.config._name_or_path = str(path)  # not the deleted temporary folder: files beside it stay findable
    return loaded


def save_converted(config: ViTPoseConfig, state_dict: dict[str, torch.Tensor], directory: str | os.PathLike) -> None:
    """Write a `save_pretrained`-style folder (config.json + model.safetensors) for converted weights."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    config.save_pretrained(directory)
    save_file({k: v.contiguous() for k, v in state_dict.items()}, os.path.join(str(directory), "model.safetensors"), metadata={"format": "pt"})


__all__ = [
    "HEAD_LAYOUTS",
    "convert_official_state_dict",
    "convert_transformers_state_dict",
    "infer_official_config",
    "is_transformers_vitpose",
    "layout_from_id2label",
    "load_official_state_dict",
    "load_state_dict_files",
    "load_transformers_vitpose",
    "ours_to_transformers",
    "save_converted",
    "transformers_config_to_ours",
]
