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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .configuration_vitpose_hf import PRESET_SIZES, ViTPoseConfig, preset_size_key
from .keypoint_metadata import VITPOSE_PLUS_DATASETS, get_dataset_info, infer_flip_pairs, match_builtin_dataset

if TYPE_CHECKING:  # annotations only: the model module imports this one
    from .modeling_vitpose_hf import ViTPoseForPoseEstimation

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
# position embeddings
# ---------------------------------------------------------------------------------------------------------------


def resample_position_table(table: torch.Tensor, trained: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize (align_corners=False, computed in fp32) of a `(1, h*w, C)` table from `trained` to `grid`."""
    C = table.shape[-1]
    image = table.reshape(1, trained[0], trained[1], C).permute(0, 3, 1, 2)
    image = F.interpolate(image.float(), size=tuple(grid), mode="bicubic", align_corners=False).to(table.dtype)
    return image.flatten(2).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------------
# official mmpose checkpoints
# ---------------------------------------------------------------------------------------------------------------


def load_official_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read an official `.pth`: an mmcv checkpoint dict with `state_dict`, or a bare state dict.

    Raises FileNotFoundError for a missing file and ValueError for a file that ``torch.load`` cannot read."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no such checkpoint file: {os.fspath(path)!r}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle / zip / torch errors (KeyError, UnpicklingError, RuntimeError)
        raise ValueError(
            f"{os.fspath(path)!r} is not a checkpoint that torch.load can read (an official ViTPose .pth is a "
            f"pickled state dict): {type(exc).__name__}: {exc}"
        ) from None
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
    experts = sorted(
        {int(m.group(1)) for k in sd if (m := re.match(r"backbone\.blocks\.0\.mlp\.experts\.(\d+)\.weight", k))}
    )
    fc2_rows = sd["backbone.blocks.0.mlp.fc2.weight"].shape[0]
    if experts and fc2_rows < hidden:
        kwargs.update(num_experts=len(experts), part_features=sd["backbone.blocks.0.mlp.experts.0.weight"].shape[0])
    if any(re.match(r"heads\.\d+\.proj\.weight$", k) for k in sd):
        raise ValueError(
            "the checkpoint has minimal-decoder heads, which official checkpoints do not have: load it with "
            "ViTPoseForPoseEstimation.from_pretrained"
        )
    classic = any(k.endswith("deconv_layers.0.weight") for k in sd)
    kwargs["decoder"] = "classic" if classic else "simple"
    if classic:
        kwargs["deconv_channels"] = next(v.shape[1] for k, v in sd.items() if k.endswith("deconv_layers.0.weight"))
    counts = tuple(sd[f"heads.{i}.final_layer.weight"].shape[0] for i in range(_count_heads(sd)))
    if "datasets" not in overrides:
        if counts not in HEAD_LAYOUTS:
            raise ValueError(f"heads with {list(counts)} keypoints match no official layout: pass datasets=[...]")
        kwargs["datasets"] = HEAD_LAYOUTS[counts]
    if kwargs.get("num_experts", 1) > 1 and len(kwargs.get("datasets", overrides.get("datasets", []))) not in (
        1,
        kwargs["num_experts"],
    ):
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
        raise ValueError(
            f"unexpected keys in the official checkpoint: {unknown[:10]}{' ...' if len(unknown) > 10 else ''}"
        )
    if split_file:
        logger.info("dense split checkpoint: dropped leftover experts and associate heads")
    return out


# ---------------------------------------------------------------------------------------------------------------
# transformers' `vitpose` checkpoints
# ---------------------------------------------------------------------------------------------------------------

_HF_HEAD = {
    "deconv1": "deconv_layers.0",
    "batchnorm1": "deconv_layers.1",
    "deconv2": "deconv_layers.3",
    "batchnorm2": "deconv_layers.4",
    "conv": "final_layer",
}
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
            where,
            num_keypoints,
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


def ours_to_transformers(
    config: ViTPoseConfig, state_dict: dict[str, torch.Tensor], dataset: int | str = 0
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Export to transformers' `vitpose` format: one head (`dataset`), experts kept.

    Raises where that format cannot represent the model.
    """
    if config.patch_padding != 2:
        raise ValueError("transformers' VitPose hard-codes patch padding 2")
    if config.decoder not in ("classic", "simple"):
        raise ValueError(
            f"transformers' VitPose has only the classic and simple decoders; this model's {config.decoder!r} "
            "decoder cannot be exported (keep it in the vitpose_hf format: save_pretrained)"
        )
    if getattr(config, "knowledge_token", False):
        raise ValueError(
            "transformers' VitPose has no knowledge token; this model's cannot be exported "
            "(keep it in the vitpose_hf format: save_pretrained)"
        )
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
    save_file(
        {k: v.contiguous() for k, v in state_dict.items()},
        os.path.join(str(directory), "model.safetensors"),
        metadata={"format": "pt"},
    )


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


# ---------------------------------------------------------------------------------------------------------------
# Training initialisation: ViT / MAE encoders into the backbone, and checkpoint surgery (new heads and experts).
# Used by `vitpose-hf train` (--init_from, fine-tuning onto other layouts).
# ---------------------------------------------------------------------------------------------------------------


def _interpolate_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(1, [1 +] S*S, C)`` -> ``(1, 1 + h*w, C)``: keep the first (class) slot, resample the square grid.

    Our backbone keeps the official extra leading slot (added to every token), so a table without one gets a zero
    slot. The grid goes through the model's own `resample_position_table` (bicubic, align_corners=False, fp32).
    """
    n = pos.shape[1]
    side = math.isqrt(n)
    if side * side == n:  # no class slot
        extra, table = pos.new_zeros(1, 1, pos.shape[2]), pos
    else:
        side = math.isqrt(n - 1)
        if side * side != n - 1:
            raise ValueError(f"position embedding with {n} slots is not 1 + a square grid")
        extra, table = pos[:, :1], pos[:, 1:]
    if (side, side) != tuple(grid):
        table = resample_position_table(table, (side, side), tuple(grid))
    return torch.cat([extra, table], dim=1)


def _resize_patch_kernel(weight: torch.Tensor, size: int) -> torch.Tensor:
    """Official rule for a patch kernel of another size: zero-pad a smaller one, resize a larger one (bicubic)."""
    k = weight.shape[-1]
    if k == size:
        return weight
    if k < size:
        before = (size - k) // 2
        return F.pad(weight, (before, size - k - before, before, size - k - before))
    return F.interpolate(weight.float(), size=(size, size), mode="bicubic", align_corners=False).to(weight.dtype)


# Per-layer key names of ViT encoders: ours -> their names (concatenated along rows), for every format we read.
_VIT_LAYER_FORMATS: dict[str, dict[str, list[str]]] = {
    # transformers checkpoints on disk / the Hub (ViTModel, ViTMAEModel): encoder.layer.{i}.*
    "hf": {
        "attn.qkv": ["attention.attention.query", "attention.attention.key", "attention.attention.value"],
        "attn.proj": ["attention.output.dense"],
        "mlp.fc1": ["intermediate.dense"],
        "mlp.fc2": ["output.dense"],
        "norm1": ["layernorm_before"],
        "norm2": ["layernorm_after"],
    },
    # transformers >= 5 modules in memory: layers.{i}.*
    "hf5": {
        "attn.qkv": ["attention.q_proj", "attention.k_proj", "attention.v_proj"],
        "attn.proj": ["attention.o_proj"],
        "mlp.fc1": ["mlp.fc1"],
        "mlp.fc2": ["mlp.fc2"],
        "norm1": ["layernorm_before"],
        "norm2": ["layernorm_after"],
    },
    # timm / official MAE .pth: blocks.{i}.*
    "timm": {name: [name] for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")},
}
_VIT_LAYER_PREFIX = {"hf": "encoder.layer.{i}.", "hf5": "layers.{i}.", "timm": "blocks.{i}."}


def convert_vit_state_dict(
    state: Mapping[str, torch.Tensor], config: ViTPoseConfig
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map a ViT / MAE encoder state dict onto our backbone (``backbone.*`` keys).

    Reads transformers `ViTModel` / `ViTMAEModel` checkpoints (optionally under ``vit.``; the on-disk names and
    transformers 5's in-memory names) and timm / official MAE names (``patch_embed``, ``pos_embed``, ``blocks.i``;
    optionally under ``model.``). The class token and the encoder's final norm are not used (as the official
    loader: ``last_norm`` starts fresh); the position embedding is resized to the model's token grid; with ViTPose++
    experts every expert starts as the last ``part_features`` rows of the dense fc2 and fc2 keeps the first rows
    (the official dense -> MoE split).

    Returns:
        ``(state_dict, unused_keys)``.
    """
    src = {}
    for key, value in state.items():
        for prefix in ("module.", "model.", "vit.", "backbone."):
            key = key.removeprefix(prefix)
        src[key] = value
    C, p = config.hidden_size, config.part_features if config.num_experts > 1 else 0
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()

    def take(name: str) -> torch.Tensor | None:
        if name in src:
            used.add(name)
            return src[name]
        return None

    if "embeddings.position_embeddings" in src:
        patch_w = take("embeddings.patch_embeddings.projection.weight")
        patch_b = take("embeddings.patch_embeddings.projection.bias")
        pos = take("embeddings.position_embeddings")
        take("embeddings.cls_token")
    else:
        patch_w, patch_b, pos = take("patch_embed.proj.weight"), take("patch_embed.proj.bias"), take("pos_embed")
        take("cls_token")
    if patch_w is None or pos is None:
        raise ValueError("the checkpoint has no ViT patch embedding / position embedding (is it a ViT or MAE encoder?)")
    if patch_w.shape[:2] != (C, config.num_channels):
        raise ValueError(f"checkpoint width {patch_w.shape[0]} does not match the model's hidden_size {C}")
    formats = [f for f, prefix in _VIT_LAYER_PREFIX.items() if any(k.startswith(prefix.format(i=0)) for k in src)]
    if not formats:
        raise ValueError(
            "the checkpoint has no transformer layers in a known format (encoder.layer.i, layers.i, blocks.i)"
        )
    fmt = formats[0]
    out["backbone.patch_embed.proj.weight"] = _resize_patch_kernel(patch_w, config.patch_size)
    if patch_b is not None:
        out["backbone.patch_embed.proj.bias"] = patch_b
    out["backbone.pos_embed"] = _interpolate_pos_embed(pos, config.patch_grid)
    for i in range(config.num_hidden_layers):
        pre, dst = _VIT_LAYER_PREFIX[fmt].format(i=i), f"backbone.blocks.{i}."
        for ours, theirs in _VIT_LAYER_FORMATS[fmt].items():
            for kind in ("weight", "bias"):
                parts = [take(f"{pre}{name}.{kind}") for name in theirs]
                if any(part is None for part in parts):
                    raise ValueError(
                        f"the checkpoint has no {pre}{theirs[0]}.{kind} (the model has "
                        f"{config.num_hidden_layers} layers)"
                    )
                value = torch.cat(parts) if len(parts) > 1 else parts[0]
                if ours == "mlp.fc2" and p:
                    out[f"{dst}mlp.fc2.{kind}"] = value[: C - p]
                    for e in range(config.num_experts):
                        out[f"{dst}mlp.experts.{e}.{kind}"] = value[C - p :].clone()
                else:
                    out[f"{dst}{ours}.{kind}"] = value
    unused = sorted(k for k in src if k not in used)
    return out, unused


def load_vit_backbone(model: ViTPoseForPoseEstimation, source: str, cache_dir: str | None = None) -> list[str]:
    """Load a ViT / MAE encoder (Hub id, checkpoint folder, or .pth / .safetensors file) into ``model``'s backbone.

    Returns the checkpoint keys that were not used (decoder, final norm, pooler, ...).
    """
    if os.path.isfile(source):
        if source.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(source)
        else:
            state = torch.load(source, map_location="cpu", weights_only=True)
            for key in ("model", "state_dict"):
                if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                    state = state[key]
    else:
        state = load_state_dict_files(source, **({"cache_dir": cache_dir} if cache_dir else {}))
    mapped, unused = convert_vit_state_dict(state, model.config)
    own = model.state_dict()
    for key, value in mapped.items():
        if own[key].shape != value.shape:
            raise ValueError(
                f"{key}: checkpoint shape {tuple(value.shape)} does not fit the model's {tuple(own[key].shape)}"
            )
    model.load_state_dict(mapped, strict=False)
    decoder_like = [k for k in unused if not k.startswith("decoder")]
    logger.info(
        f"initialised the backbone from {source}: {len(mapped)} tensors; unused: {decoder_like[:8]}"
        f"{' ...' if len(decoder_like) > 8 else ''}"
    )
    return unused


def _dense_fc2(state: Mapping[str, torch.Tensor], prefix: str, expert: int | None, kind: str) -> torch.Tensor:
    """The dense fc2 of one dataset: ``[fc2 | expert]`` rows for an expert model, fc2 itself for a dense one."""
    fc2 = state[f"{prefix}mlp.fc2.{kind}"]
    if expert is None:
        return fc2
    return torch.cat([fc2, state[f"{prefix}mlp.experts.{expert}.{kind}"]])


def adapt_model(
    source: ViTPoseForPoseEstimation, layouts: Sequence[dict], num_experts: int, part_features: int | None = None
) -> ViTPoseForPoseEstimation:
    """A model for other keypoint layouts (heads) and experts, initialised from ``source``.

    The encoder is copied; a head is copied when ``source`` has a head of the same name and keypoint count, else it
    starts fresh. Each new expert starts from the expert of its layout in ``source`` (by name, the official expert
    order for six-expert checkpoints; else the first one): the dense FFN of that dataset is rebuilt as
    ``[fc2 | expert]`` and split again at the new width. A dense target gets the FFN of its first layout.
    """
    cfg = source.config
    config_dict = cfg.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
        config_dict.pop(key, None)
    experts = max(1, num_experts)
    p = (part_features or cfg.part_features or cfg.hidden_size // 4) if experts > 1 else 0
    config_dict.update(datasets=list(layouts), num_experts=experts, part_features=p)
    config = ViTPoseConfig(**config_dict)
    config._attn_implementation = cfg._attn_implementation
    model = type(source)(config)
    src = source.state_dict()
    dst = model.state_dict()
    old_names = cfg.dataset_names
    # experts of the source by dataset name: one per head, or the official six (transformers' ViTPose++ checkpoints
    # kept the COCO head alone but all six experts, in the official order)
    if cfg.num_experts == len(old_names):
        expert_names = old_names
    elif cfg.num_experts == len(VITPOSE_PLUS_DATASETS):
        expert_names = list(VITPOSE_PLUS_DATASETS)
    else:
        expert_names = []
    src_expert_of: dict[int, int | None] = {}
    for k, name in enumerate(config.dataset_names):
        if cfg.num_experts > 1:
            src_expert_of[k] = expert_names.index(name) if name in expert_names else 0
        else:
            src_expert_of[k] = None
    C = config.hidden_size
    new_state = {}
    for key, value in dst.items():
        if key.startswith("heads."):
            k, rest = key.split(".", 2)[1:]
            name = config.dataset_names[int(k)]
            if name in old_names:
                old_key = f"heads.{old_names.index(name)}.{rest}"
                if old_key in src and src[old_key].shape == value.shape:
                    new_state[key] = src[old_key]
            continue
        if ".mlp.fc2." in key or ".mlp.experts." in key:
            prefix, kind = key.split("mlp.")[0], key.rsplit(".", 1)[1]
            if ".mlp.fc2." in key:
                dense = _dense_fc2(src, prefix, src_expert_of[0], kind)
                new_state[key] = dense[: C - p] if p else dense
            else:
                e = int(key.split(".mlp.experts.")[1].split(".")[0])
                new_state[key] = _dense_fc2(src, prefix, src_expert_of[e], kind)[C - p :].clone()
            continue
        if key in src and src[key].shape == value.shape:
            new_state[key] = src[key]
    missing = model.load_state_dict(new_state, strict=False).missing_keys
    fresh_heads = sorted({k.split(".")[1] for k in missing if k.startswith("heads.")})
    if fresh_heads:
        logger.info(f"new heads (random init): {[config.dataset_names[int(k)] for k in fresh_heads]}")
    other = [k for k in missing if not k.startswith("heads.")]
    if other:
        raise ValueError(f"could not initialise {other[:5]} from the checkpoint")
    return model


__all__ += ["adapt_model", "convert_vit_state_dict", "load_vit_backbone"]
