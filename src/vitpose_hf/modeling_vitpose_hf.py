"""ViTPose and ViTPose++ in PyTorch, read top to bottom: patch embedding -> attention -> FFN / PS-FFN -> block
-> encoder (`ViTPoseModel`) -> heatmap heads -> `ViTPoseForPoseEstimation`.

Letters used in shapes: B batch, N tokens, C hidden size, P expert width (`part_features`), K keypoints,
(h, w) token grid, (H, W) heatmap size = 4x the token grid.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

try:  # transformers 5: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as init
except ImportError:  # transformers 4
    from torch.nn import init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.utils import ModelOutput

from .configuration_vitpose_hf import ViTPoseConfig

DatasetIndex = int | str | Sequence[int | str] | torch.Tensor
# (dataset, rows of the batch that belong to it; None when the whole batch does)
Groups = list[tuple[int, torch.Tensor | None]]


@dataclass
class ViTPoseModelOutput(ModelOutput):
    """Output of the encoder.

    Args:
        last_hidden_state: `(B, N, C)` tokens after the final LayerNorm.
        feature_maps: `(B, C, h, w)` the same tokens laid out on the patch grid; what the heads read.
        hidden_states: with `output_hidden_states`, the embeddings and every block's output, each `(B, N, C)`,
            before the final LayerNorm.
        attentions: with `output_attentions`, each block's attention probabilities `(B, heads, N, N)`.
    """

    last_hidden_state: torch.Tensor | None = None
    feature_maps: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


@dataclass
class ViTPoseEstimatorOutput(ModelOutput):
    """Output of `ViTPoseForPoseEstimation`.

    Args:
        loss: visibility-weighted keypoint MSE, when `labels` are given.
        heatmaps: `(B, K, H, W)`. In a batch that mixes datasets with different keypoint counts, K is the largest
            count among the datasets present; sample i uses its first `num_keypoints[i]` channels and the rest
            are zero.
        num_keypoints: `(B,)` number of real heatmap channels of each sample.
        dataset_index: `(B,)` dataset (head) of each sample.
        hidden_states, attentions: as in `ViTPoseModelOutput`.
    """

    loss: torch.Tensor | None = None
    heatmaps: torch.Tensor | None = None
    num_keypoints: torch.Tensor | None = None
    dataset_index: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


def group_by_index(index: torch.Tensor) -> Groups:
    """Split a batch by dataset: `[(k, rows)]`, or `[(k, None)]` when every sample has index k."""
    values = index.tolist()
    if all(v == values[0] for v in values):
        return [(values[0], None)]
    return [(k, (index == k).nonzero().squeeze(1)) for k in sorted(set(values))]


# ----------------------------------------------------------------------------------------------------------------
# Encoder blocks
# ----------------------------------------------------------------------------------------------------------------


class CastCache:
    """Weights cast once for inference under `torch.autocast`, instead of on every forward.

    autocast re-casts every fp32 weight to bf16/fp16 on each call; at inference that copy is pure overhead.
    Entries are keyed by the source tensors' storage and version, so any weight update invalidates them.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple, torch.Tensor]] = {}

    def get(self, name: str, dtype: torch.dtype, sources: tuple[torch.Tensor, ...], build) -> torch.Tensor:
        key = (dtype,) + tuple((t.data_ptr(), t._version, t.device) for t in sources)
        entry = self._entries.get(name)
        if entry is None or entry[0] != key:
            with torch.no_grad():
                entry = (key, build().to(dtype))
            self._entries[name] = entry
        return entry[1]


def inference_cast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The autocast dtype when running under autocast without autograd (inference), else None."""
    device = x.device.type
    if torch.is_grad_enabled() or not torch.is_autocast_enabled(device) or torch.compiler.is_compiling():
        return None
    return torch.get_autocast_dtype(device)


# oneDNN's fused linear (used by torch.compile on CPU): faster than the default CPU GEMM on some CPUs, and it
# folds the GELU or the residual add into the GEMM. Only for inference; autograd takes the plain path.
_ONEDNN_LINEAR = hasattr(torch.ops.mkldnn, "_linear_pointwise") and torch.backends.mkldnn.is_available()


def fused_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: str | None = None,
    residual: torch.Tensor | None = None,
) -> torch.Tensor:
    """`residual + act(x @ weight.T + bias)`, with `act` None or exact "gelu"; one fused call at CPU inference."""
    global _ONEDNN_LINEAR
    if (
        _ONEDNN_LINEAR
        and bias is not None
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.bfloat16)
        and weight.dtype == x.dtype == bias.dtype
        and not torch.is_grad_enabled()
        and not torch.compiler.is_compiling()
    ):
        try:
            if residual is not None and activation is None:
                return torch.ops.mkldnn._linear_pointwise.binary(x, residual.to(x.dtype), weight, bias, "add")
            if residual is None:
                return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation or "none", [], "none" if activation else "")
        except RuntimeError:  # an older or different build: fall back for good
            _ONEDNN_LINEAR = False
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y)
    return y if residual is None else residual + y


class ViTPoseLinear(nn.Linear):
    """`nn.Linear` with an optional fused GELU / residual add, that keeps its autocast weights between inference calls."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._cast_cache = CastCache()

    def forward(self, x: torch.Tensor, activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
        dtype = inference_cast_dtype(x)
        if dtype is None:
            return fused_linear(x, self.weight, self.bias, activation, residual)
        weight = self._cast_cache.get("weight", dtype, (self.weight,), lambda: self.weight)
        bias = None if self.bias is None else self._cast_cache.get("bias", dtype, (self.bias,), lambda: self.bias)
        return fused_linear(x.to(dtype), weight, bias, activation, residual)


class ViTPosePatchEmbed(nn.Module):
    """`(B, 3, height, width)` -> `(B, N, C)` tokens and the grid `(h, w)`."""

    def __init__(self, config: ViTPoseConfig) -> None:
        super().__init__()
        # official quirk: padding 2 shifts the 16x16 grid by 2 px; the weights depend on it
        self.proj = nn.Conv2d(
            config.num_channels,
            config.hidden_size,
            kernel_size=config.patch_size,
            stride=config.patch_size,
            padding=config.patch_padding,
        )

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(pixel_values)
        grid = (x.shape[2], x.shape[3])
        return x.flatten(2).transpose(1, 2), grid


class ViTPoseAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (rows ordered [q | k | v] as in the official weights)."""

    def __init__(self, config: ViTPoseConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scale = self.head_dim**-0.5
        self.qkv = ViTPoseLinear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = ViTPoseLinear(config.hidden_size, config.hidden_size)
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(
        self, x: torch.Tensor, output_attentions: bool = False, residual: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(B, N, C)` -> `(B, N, C)` (plus `residual` when given) and the attention maps when asked for."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        dropout = self.config.attention_probs_dropout_prob if self.training else 0.0
        attn = None
        if output_attentions or self.config._attn_implementation == "eager":
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            x = F.dropout(attn, dropout, self.training) @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        x = x.transpose(1, 2).reshape(B, N, C)
        if residual is not None:
            return self.proj(x, residual=residual), attn
        return self.proj_drop(self.proj(x)), attn


def hidden_activation(fc1: ViTPoseLinear, act: nn.Module, act_name: str, x: torch.Tensor) -> torch.Tensor:
    """`act(fc1(x))`, with exact GELU fused into the GEMM when possible."""
    if act_name == "gelu":
        return fc1(x, activation="gelu")
    return act(fc1(x))


class ViTPoseMLP(nn.Module):
    """Dense FFN: fc1 (C -> 4C), exact GELU, fc2 (4C -> C)."""

    def __init__(self, config: ViTPoseConfig) -> None:
        super().__init__()
        self.fc1 = ViTPoseLinear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.config_act = config.hidden_act
        self.fc2 = ViTPoseLinear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, groups: Groups | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, N, C)` -> `(B, N, C)`, plus `residual` when given (inference only)."""
        h = hidden_activation(self.fc1, self.act, self.config_act, x)
        if residual is not None:
            return self.fc2(h, residual=residual)
        return self.drop(self.fc2(h))


class ViTPosePartiallySharedMLP(nn.Module):
    """ViTPose++ PS-FFN: a shared fc1, a shared fc2 to C - P channels and one expert (4C -> P) per dataset.

    Output channels are `[shared | expert]` (official order). Routing is hard, by dataset: each sample goes
    through its own expert once, so the cost equals a dense FFN whatever the number of experts.
    """

    def __init__(self, config: ViTPoseConfig) -> None:
        super().__init__()
        self.fc1 = ViTPoseLinear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.config_act = config.hidden_act
        self.fc2 = ViTPoseLinear(config.intermediate_size, config.hidden_size - config.part_features)
        self.experts = nn.ModuleList(
            ViTPoseLinear(config.intermediate_size, config.part_features) for _ in range(config.num_experts)
        )
        self.drop = nn.Dropout(config.hidden_dropout_prob)
        self._merged = CastCache()

    def merged_weights(self, expert_index: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """`[fc2 | expert]` weight `(C, 4C)` and bias `(C,)`, rebuilt only when the expert or a weight changes.

        One merged copy per layer at most (not one per expert), so memory does not grow with the experts used.
        """
        expert = self.experts[expert_index]
        weight = self._merged.get("weight", dtype, (self.fc2.weight, expert.weight), lambda: torch.cat([self.fc2.weight, expert.weight]))
        bias = self._merged.get("bias", dtype, (self.fc2.bias, expert.bias), lambda: torch.cat([self.fc2.bias, expert.bias]))
        return weight, bias

    def forward(self, x: torch.Tensor, groups: Groups | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
        """`(B, N, C)` -> `(B, N, C)`, plus `residual` when given (inference only)."""
        if groups is None:
            raise ValueError("a ViTPose++ FFN needs the expert of each sample (pass dataset_index)")
        h = hidden_activation(self.fc1, self.act, self.config_act, x)
        if len(groups) == 1:
            # one dataset: a single GEMM over the concatenated [fc2 | expert] weights, as dense ViTPose
            k = groups[0][0]
            if torch.is_grad_enabled():
                expert = self.experts[k]
                weight, bias = torch.cat([self.fc2.weight, expert.weight]), torch.cat([self.fc2.bias, expert.bias])
            else:  # inference: reuse the merged (and, under autocast, cast) weights
                dtype = inference_cast_dtype(h) or self.fc2.weight.dtype
                weight, bias = self.merged_weights(k, dtype)
                h = h.to(dtype)
            if residual is not None:
                return fused_linear(h, weight, bias, residual=residual)
            return self.drop(F.linear(h, weight, bias))
        shared = self.fc2(h)
        routed = shared.new_empty(*shared.shape[:-1], self.experts[0].out_features)
        for k, rows in groups:
            routed[rows] = self.experts[k](h[rows]).to(routed.dtype)
        out = self.drop(torch.cat([shared, routed], dim=-1))
        return out if residual is None else residual + out


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch of whole samples."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class ViTPoseBlock(GradientCheckpointingLayer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, config: ViTPoseConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = ViTPoseAttention(config)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTPosePartiallySharedMLP(config) if config.num_experts > 1 else ViTPoseMLP(config)
        self.drop_path2 = DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, groups: Groups | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.training:  # no drop path: fold the residual adds into the projections' GEMMs
            x, attn = self.attn(self.norm1(x), output_attentions, residual=x)
            return self.mlp(self.norm2(x), groups, residual=x), attn
        attn_out, attn = self.attn(self.norm1(x), output_attentions)
        x = x + self.drop_path1(attn_out)
        x = x + self.drop_path2(self.mlp(self.norm2(x), groups))
        return x, attn


# ----------------------------------------------------------------------------------------------------------------
# Pretrained-model base: init, dataset-index checks, training hooks
# ----------------------------------------------------------------------------------------------------------------


class ViTPosePreTrainedModel(PreTrainedModel):
    config_class = ViTPoseConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _no_split_modules = ["ViTPoseBlock"]
    # the attention reads config._attn_implementation on every call, so switching it later is safe
    _can_set_attn_implementation_cached_value = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, ViTPosePatchEmbed)):
            layer = module.proj if isinstance(module, ViTPosePatchEmbed) else module
            init.trunc_normal_(layer.weight, std=std)
            if layer.bias is not None:
                init.zeros_(layer.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.ConvTranspose2d, ViTPoseHeadFinalConv)):
            # mmpose's head init: small normal weights, zero bias
            init.normal_(module.weight, std=0.001)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, ViTPoseModel):
            init.trunc_normal_(module.pos_embed, std=std)

    def resolve_dataset_index(self, dataset_index: DatasetIndex | None, batch_size: int, device: torch.device) -> torch.Tensor:
        """Turn an int, a dataset name, a list or a tensor into a checked `(B,)` LongTensor of dataset indices."""
        names = self.config.dataset_names
        if dataset_index is None:
            if len(names) == 1:
                return torch.zeros(batch_size, dtype=torch.long, device=device)
            raise ValueError(
                f"this model has {len(names)} datasets {names}: pass dataset_index (an int, a dataset name, or a "
                f"tensor of shape (batch_size,)) to choose each sample's expert and head"
            )
        if isinstance(dataset_index, (str, int)):
            dataset_index = [dataset_index]
        if not isinstance(dataset_index, torch.Tensor):
            values = [self.config.dataset_to_index(d) if isinstance(d, str) else d for d in dataset_index]
            if not all(isinstance(v, int) or (hasattr(v, "__index__") and not isinstance(v, bool)) for v in values):
                raise ValueError(f"dataset_index entries must be ints or dataset names, got {list(dataset_index)}")
            dataset_index = torch.tensor([int(v) for v in values], dtype=torch.long)
        if dataset_index.is_floating_point() or dataset_index.is_complex() or dataset_index.dtype == torch.bool:
            raise ValueError(f"dataset_index must hold integers, got dtype {dataset_index.dtype}")
        index = dataset_index.to(device=device, dtype=torch.long).reshape(-1)
        if index.numel() == 1:
            index = index.expand(batch_size)
        if index.numel() != batch_size:
            raise ValueError(f"dataset_index has {index.numel()} entries for a batch of {batch_size}")
        return index

    def _check_index_range(self, index: torch.Tensor, count: int, what: str) -> None:
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= count:
            bad = low if low < 0 else high
            raise ValueError(
                f"{what} {bad} is out of range: this model has {count} ({self.config.dataset_names} datasets, "
                f"{self.config.num_experts} experts)"
            )

    # ---- training hooks (timm style), used by the training script ---------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay: 1-D tensors (biases, norms) and the position embedding."""
        return {n for n, p in self.named_parameters() if p.ndim <= 1 or n.endswith(".bias") or "pos_embed" in n}

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay: 0 embeddings, i + 1 block i, depth + 1 the rest."""
        name = name.removeprefix(f"{self.base_model_prefix}.")
        if name.startswith(("pos_embed", "patch_embed", "cls_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.config.num_hidden_layers + 1

    def param_groups(self, weight_decay: float = 0.1, layer_decay: float = 1.0) -> list[dict[str, Any]]:
        """AdamW parameter groups with the official layer-wise lr decay: `lr_scale = layer_decay ** (depth + 1 - id)`."""
        skip = self.no_weight_decay()
        top = self.config.num_hidden_layers + 1
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            layer, decay = self.layer_id(name), name not in skip
            group = groups.setdefault(
                (layer, decay),
                {"params": [], "names": [], "weight_decay": weight_decay if decay else 0.0, "lr_scale": layer_decay ** (top - layer)},
            )
            group["params"].append(param)
            group["names"].append(name)
        return list(groups.values())


# ----------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------


class ViTPoseModel(ViTPosePreTrainedModel):
    """The plain ViT encoder of ViTPose (dense FFN) or ViTPose++ (PS-FFN with per-dataset experts)."""

    def __init__(self, config: ViTPoseConfig) -> None:
        super().__init__(config)
        self.patch_embed = ViTPosePatchEmbed(config)
        grid_h, grid_w = config.patch_grid
        # official quirk: one extra slot (a "cls" slot with no cls token) that is added to every token
        self.pos_embed = nn.Parameter(torch.zeros(1, grid_h * grid_w + 1, config.hidden_size))
        self.pos_drop = nn.Dropout(config.hidden_dropout_prob)
        depth = config.num_hidden_layers
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]  # linear 0 -> rate
        self.blocks = nn.ModuleList(ViTPoseBlock(config, rate) for rate in rates)
        self.last_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    def position_embedding(self, grid: tuple[int, int], interpolate: bool) -> torch.Tensor:
        """`(1, h*w, C)` position embedding for a token grid, slot 0 folded in."""
        extra, table = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        trained = self.config.patch_grid
        if tuple(grid) != tuple(trained):
            if not interpolate:
                raise ValueError(
                    f"input gives a {grid[0]}x{grid[1]} token grid but the model was built for "
                    f"{self.config.image_size[0]}x{self.config.image_size[1]} pixels ({trained[0]}x{trained[1]} tokens); "
                    f"set config.interpolate_pos_encoding=True (or pass interpolate_pos_encoding=True) to resize the "
                    f"position embedding"
                )
            table = table.reshape(1, trained[0], trained[1], -1).permute(0, 3, 1, 2)
            table = F.interpolate(table.float(), size=grid, mode="bicubic", align_corners=False).to(extra.dtype)
            table = table.flatten(2).transpose(1, 2)
        return table + extra

    def forward(
        self,
        pixel_values: torch.Tensor,
        dataset_index: DatasetIndex | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ViTPoseModelOutput | tuple:
        """`pixel_values` `(B, 3, height, width)` -> tokens `(B, N, C)` and feature map `(B, C, h, w)`."""
        check_pixel_values(pixel_values, self.config.num_channels)
        output_hidden_states = output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        interpolate = self.config.interpolate_pos_encoding if interpolate_pos_encoding is None else interpolate_pos_encoding
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        groups = None
        if self.config.num_experts > 1:
            expert_index = kwargs.pop("expert_index", None)
            index = self.resolve_dataset_index(
                expert_index if expert_index is not None else dataset_index, pixel_values.shape[0], pixel_values.device
            )
            self._check_index_range(index, self.config.num_experts, "expert index")
            groups = group_by_index(index)

        x, grid = self.patch_embed(pixel_values)
        x = self.pos_drop(x + self.position_embedding(grid, interpolate).to(x.dtype))
        hidden_states = (x,) if output_hidden_states else None
        attentions = () if output_attentions else None
        for block in self.blocks:
            x, attn = block(x, groups, output_attentions)
            if output_hidden_states:
                hidden_states += (x,)
            if output_attentions:
                attentions += (attn,)
        x = self.last_norm(x)
        feature_maps = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])
        if not return_dict:
            return tuple(v for v in (x, feature_maps, hidden_states, attentions) if v is not None)
        return ViTPoseModelOutput(
            last_hidden_state=x, feature_maps=feature_maps, hidden_states=hidden_states, attentions=attentions
        )


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int) -> None:
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(f"pixel_values must have shape (batch, {num_channels}, height, width), got {tuple(pixel_values.shape)}")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a float tensor (normalised crops), got dtype {pixel_values.dtype}")
    # one reduction instead of a full boolean mask: any NaN or inf makes the sum non-finite
    if not torch.compiler.is_compiling() and not bool(torch.isfinite(pixel_values.sum(dtype=torch.float32))):
        raise ValueError("pixel_values contains NaN or infinite values")


# ----------------------------------------------------------------------------------------------------------------
# Heatmap heads, one per dataset
# ----------------------------------------------------------------------------------------------------------------


class ViTPoseHeadFinalConv(nn.Conv2d):
    """The last convolution of a head (its own class so that init can find it)."""


class ViTPoseClassicHead(nn.Module):
    """Classic decoder: 2 x [ConvTranspose k4 s2 p1 (no bias), BatchNorm, ReLU], then a 1x1 conv.

    `(B, C, h, w)` -> `(B, K, 4h, 4w)`. Submodule indices match the official `deconv_layers.{0,1,3,4}` keys.
    """

    def __init__(self, config: ViTPoseConfig, num_keypoints: int) -> None:
        super().__init__()
        width = config.deconv_channels
        self.deconv_layers = nn.Sequential(
            nn.ConvTranspose2d(config.hidden_size, width, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(width, width, kernel_size=4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        self.final_layer = ViTPoseHeadFinalConv(width, num_keypoints, kernel_size=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.final_layer(self.deconv_layers(features))


class ViTPoseSimpleHead(nn.Module):
    """Simple decoder: ReLU, bilinear x4 (align_corners=False), 3x3 conv. `(B, C, h, w)` -> `(B, K, 4h, 4w)`.

    Computed exactly but cheaply: the 3x3 conv is split into 9 per-tap 1x1 projections applied at low
    resolution (channel mixing commutes with bilinear upsampling), then the upsampled taps are shifted and
    summed. This upsamples 9K channels instead of C.
    """

    def __init__(self, config: ViTPoseConfig, num_keypoints: int) -> None:
        super().__init__()
        self.upsample_factor = config.upsample_factor
        self.final_layer = ViTPoseHeadFinalConv(config.hidden_size, num_keypoints, kernel_size=3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        B, _, h, w = features.shape
        weight = self.final_layer.weight  # (K, C, 3, 3)
        K = weight.shape[0]
        taps = weight.permute(2, 3, 0, 1).reshape(9 * K, -1, 1, 1)  # tap-major: (dy, dx, K)
        projected = F.conv2d(F.relu(features), taps)  # (B, 9K, h, w)
        up = F.interpolate(projected, scale_factor=self.upsample_factor, mode="bilinear", align_corners=False)
        H, W = up.shape[-2:]
        up = F.pad(up, (1, 1, 1, 1)).reshape(B, 3, 3, K, H + 2, W + 2)
        out = sum(up[:, dy, dx, :, dy : dy + H, dx : dx + W] for dy in range(3) for dx in range(3))
        return out + self.final_layer.bias.view(1, K, 1, 1).to(out.dtype)


# ----------------------------------------------------------------------------------------------------------------
# Pose model
# ----------------------------------------------------------------------------------------------------------------


def keypoint_mse_loss(
    heatmaps: torch.Tensor, labels: torch.Tensor, target_weight: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Visibility-weighted MSE of one head: sum over its samples of ((pred - gt) * w)^2 / (B * K * H * W).

    Normalising by the whole batch B (not the head's own samples) keeps the official weighting, where each
    dataset counts in proportion to its share of the batch; with one dataset it is the official JointsMSELoss.
    """
    diff = (heatmaps.float() - labels.float()) * target_weight.float()[..., None, None]
    K, H, W = heatmaps.shape[1:]
    return diff.pow(2).sum() / (batch_size * K * H * W)


class ViTPoseForPoseEstimation(ViTPosePreTrainedModel):
    """ViTPose encoder plus one heatmap head per dataset (`config.datasets`).

    `dataset_index` picks each sample's expert (ViTPose++) and head. It may be omitted for a single-dataset model.
    """

    def __init__(self, config: ViTPoseConfig) -> None:
        super().__init__(config)
        self.backbone = ViTPoseModel(config)
        head_class = ViTPoseClassicHead if config.decoder == "classic" else ViTPoseSimpleHead
        self.heads = nn.ModuleList(head_class(config, k) for k in config.num_keypoints)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        dataset_index: DatasetIndex | None = None,
        labels: torch.Tensor | None = None,
        target_weight: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        expert_index: DatasetIndex | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ViTPoseEstimatorOutput | tuple:
        """
        Args:
            pixel_values: `(B, 3, height, width)` normalised crops.
            dataset_index: `(B,)` tensor, a list, one int or one dataset name: the head (and expert) of each sample.
            labels: `(B, K, H, W)` target heatmaps (K at least each sample's keypoint count; extra channels ignored).
            target_weight: `(B, K)` or `(B, K, 1)` per-keypoint weights (visibility); ones when omitted.
            expert_index: overrides the expert only, for checkpoints with more experts than heads (transformers'
                ViTPose++ checkpoints, which kept the COCO head alone).
        """
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        B = pixel_values.shape[0] if isinstance(pixel_values, torch.Tensor) else 0
        device = pixel_values.device if isinstance(pixel_values, torch.Tensor) else None
        index = self.resolve_dataset_index(dataset_index, B, device)
        self._check_index_range(index, len(self.heads), "dataset index")
        if expert_index is None and self.config.num_experts > len(self.heads):
            expert_index = 0  # only dataset 0's head exists; its expert is the matching one
        encoder_out = self.backbone(
            pixel_values,
            dataset_index=index,
            expert_index=expert_index,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        features = encoder_out.feature_maps
        counts = torch.tensor(self.config.num_keypoints, device=index.device)[index]
        groups = group_by_index(index)
        if len(groups) == 1:
            heatmaps = self.heads[groups[0][0]](features)
        else:
            max_k = max(self.config.num_keypoints[k] for k, _ in groups)
            outs = {k: self.heads[k](features[rows]) for k, rows in groups}
            first = next(iter(outs.values()))
            heatmaps = first.new_zeros(B, max_k, *first.shape[-2:])
            for k, rows in groups:
                heatmaps[rows, : outs[k].shape[1]] = outs[k]

        loss = None
        if labels is not None:
            loss = self.loss(heatmaps, groups, labels, target_weight)
        if not return_dict:
            out = (heatmaps, counts, index) + tuple(
                v for v in (encoder_out.hidden_states, encoder_out.attentions) if v is not None
            )
            return ((loss,) + out) if loss is not None else out
        return ViTPoseEstimatorOutput(
            loss=loss,
            heatmaps=heatmaps,
            num_keypoints=counts,
            dataset_index=index,
            hidden_states=encoder_out.hidden_states,
            attentions=encoder_out.attentions,
        )

    def loss(
        self, heatmaps: torch.Tensor, groups: Groups, labels: torch.Tensor, target_weight: torch.Tensor | None
    ) -> torch.Tensor:
        """Sum over the heads present of each head's loss on its own samples only."""
        B = heatmaps.shape[0]
        if labels.ndim != 4 or labels.shape[0] != B or labels.shape[-2:] != heatmaps.shape[-2:]:
            raise ValueError(f"labels must have shape (batch, K, {heatmaps.shape[-2]}, {heatmaps.shape[-1]}), got {tuple(labels.shape)}")
        if target_weight is None:
            target_weight = labels.new_ones(labels.shape[:2])
        if target_weight.ndim == 3:
            target_weight = target_weight.squeeze(-1)
        if target_weight.shape[:2] != labels.shape[:2]:
            raise ValueError(f"target_weight must have shape {tuple(labels.shape[:2])}, got {tuple(target_weight.shape)}")
        total = heatmaps.new_zeros((), dtype=torch.float32)
        for k, rows in groups:
            K = self.config.num_keypoints[k]
            if labels.shape[1] < K:
                raise ValueError(f"labels have {labels.shape[1]} channels but dataset {self.config.dataset_names[k]!r} has {K} keypoints")
            sel = slice(None) if rows is None else rows
            total = total + keypoint_mse_loss(heatmaps[sel, :K], labels[sel, :K], target_weight[sel, :K], B)
        return total

    # ---- one dataset as a dense model -------------------------------------------------------------------------
    def single_dataset(self, dataset: int | str) -> "ViTPoseForPoseEstimation":
        """A dense model for one dataset: its expert merged into fc2 (no extra cost) and its head alone.

        Its outputs equal this model's with `dataset_index=dataset`; it saves with `save_pretrained`.
        """
        k = self.config.dataset_to_index(dataset)
        expert = k if self.config.num_experts == len(self.heads) else 0
        config_dict = self.config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
            config_dict.pop(key, None)
        config_dict.update(datasets=[self.config.datasets[k]], num_experts=1, part_features=0)
        config = ViTPoseConfig(**config_dict)
        config._attn_implementation = self.config._attn_implementation
        source = self.state_dict()
        state = {}
        for name, tensor in source.items():
            if ".mlp.experts." in name or (name.startswith("heads.") and not name.startswith(f"heads.{k}.")):
                continue
            if name.startswith(f"heads.{k}."):
                name = "heads.0." + name[len(f"heads.{k}.") :]
            elif ".mlp.fc2." in name and self.config.num_experts > 1:
                part = source[name.replace(".fc2.", f".experts.{expert}.")]
                tensor = torch.cat([tensor, part])  # official order: shared channels first
            state[name] = tensor.detach().clone()
        with torch.device("meta"):
            model = ViTPoseForPoseEstimation(config)
        model.load_state_dict(state, strict=True, assign=True)
        return model.train(self.training)

    # ---- loading ------------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike | None, *model_args: Any, **kwargs: Any):
        """Load our checkpoints, and transformers' `vitpose` checkpoints (converted on load, all keys checked).

        A missing or unexpected weight is an error that names it. Pass `strict=False` to only warn (e.g. to
        fine-tune with new heads together with `ignore_mismatched_sizes=True`).
        """
        strict = kwargs.pop("strict", True)
        if kwargs.get("config") is None and pretrained_model_name_or_path is not None:
            from .conversion import is_transformers_vitpose, load_transformers_vitpose

            if is_transformers_vitpose(pretrained_model_name_or_path, **kwargs):
                return load_transformers_vitpose(cls, pretrained_model_name_or_path, *model_args, strict=strict, **kwargs)
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs)
        problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if strict and problems:
            raise ValueError(f"checkpoint {pretrained_model_name_or_path} does not match the model: {problems}")
        return (model, info) if want_info else model


ViTPoseConfig.register_for_auto_class()
ViTPoseModel.register_for_auto_class("AutoModel")
ViTPoseForPoseEstimation.register_for_auto_class("AutoModelForPoseEstimation")

__all__ = [
    "ViTPoseModel",
    "ViTPoseForPoseEstimation",
    "ViTPosePreTrainedModel",
    "ViTPoseModelOutput",
    "ViTPoseEstimatorOutput",
    "keypoint_mse_loss",
]
