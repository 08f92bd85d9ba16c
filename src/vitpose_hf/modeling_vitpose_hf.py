"""ViTPose and ViTPose++ in PyTorch, read top to bottom: patch embedding -> attention -> FFN / PS-FFN -> block
-> encoder (`ViTPoseModel`) -> heatmap heads -> `ViTPoseForPoseEstimation`.

Every submodule is a plain `nn.Linear` / `nn.Conv2d` / `nn.LayerNorm` called as a module, so PEFT adapters, forward
hooks, quantizers, FSDP and `torch.compile` see the model as it computes. Under `torch.autocast` the residual stream
stays in the parameters' dtype; only the matmuls and convolutions run in the autocast dtype.

Letters used in shapes: B batch, N tokens, C hidden size, P expert width (`part_features`), K keypoints,
(h, w) token grid, (H, W) heatmap size = 4x the token grid.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_vitpose_hf import ViTPoseConfig
from .conversion import resample_position_table
from .devices import to_device

DatasetIndex = int | str | Sequence[int | str] | np.ndarray | torch.Tensor


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
        datasets: the model's dataset metadata (`config.datasets`, in head order), so that post-processing takes
            each sample's keypoint names, flip pairs and UDP setting from the model that made the heatmaps.
    """

    loss: torch.Tensor | None = None
    heatmaps: torch.Tensor | None = None
    num_keypoints: torch.Tensor | None = None
    dataset_index: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    datasets: tuple[dict[str, Any], ...] | None = None


# ----------------------------------------------------------------------------------------------------------------
# Routing: which dataset (expert, head) each sample uses, resolved on the host
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DatasetRouting:
    """A batch split by dataset.

    Args:
        index: `(B,)` dataset of each sample, on the model's device.
        groups: `[(k, rows)]`, one entry per dataset present, in increasing k; `rows` is `None` when the whole
            batch belongs to k (the common case, which needs no gather or scatter).
        restore: `(B,)` permutation that puts the group-concatenated rows back in batch order (mixed batches only).
    """

    index: torch.Tensor
    groups: list[tuple[int, torch.Tensor | None]]
    restore: torch.Tensor | None = None

    @property
    def single(self) -> int | None:
        """The dataset of a one-dataset batch, else None."""
        return self.groups[0][0] if len(self.groups) == 1 else None

    def gather(self, per_group: Callable[[int, torch.Tensor | None], torch.Tensor]) -> torch.Tensor:
        """Run `per_group(k, rows)` for each group and return the results stacked in batch order."""
        if self.restore is None:
            k, rows = self.groups[0]
            return per_group(k, rows)
        return torch.cat([per_group(k, rows) for k, rows in self.groups]).index_select(0, self.restore)


def _host_index(value: Any, names: list[str], resolve_name: Callable[[str], int]) -> int:
    """One dataset given as a name or an integer (Python or numpy); bools are refused."""
    if isinstance(value, str):
        return resolve_name(value)
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"dataset_index must be an integer or a dataset name {names}, got the bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(
            f"dataset_index entries must be integers or dataset names {names}, got {type(value).__name__} {value!r}"
        ) from None


def route_batch(
    dataset_index: DatasetIndex | DatasetRouting | None,
    batch_size: int,
    device: torch.device,
    count: int,
    names: list[str],
    resolve_name: Callable[[str], int],
    what: str = "dataset index",
) -> DatasetRouting:
    """Resolve `dataset_index` for a batch, checking each value against `count` datasets (or experts).

    An int, a name, a list or a numpy array is resolved on the host with no device work. A tensor is read back
    once (`tolist`) to form the groups; that is the only host sync of a forward, and only for tensor input.
    """
    if isinstance(dataset_index, DatasetRouting):
        return dataset_index
    if dataset_index is None:
        if count != 1:
            raise ValueError(
                f"this model has {count} datasets {names}: pass dataset_index (an int, a dataset name, or a "
                f"tensor of shape (batch_size,)) to choose each sample's expert and head"
            )
        dataset_index = 0
    if isinstance(dataset_index, torch.Tensor):
        if dataset_index.dtype == torch.bool or dataset_index.is_floating_point() or dataset_index.is_complex():
            raise ValueError(f"dataset_index must hold integers, got a tensor of dtype {dataset_index.dtype}")
        values = dataset_index.reshape(-1).tolist()
        tensor = dataset_index.reshape(-1)
    elif (
        not isinstance(dataset_index, (Sequence, np.ndarray))
        or isinstance(dataset_index, str)
        or (isinstance(dataset_index, np.ndarray) and dataset_index.ndim == 0)
    ):
        values, tensor = [_host_index(dataset_index, names, resolve_name)], None
    else:
        if isinstance(dataset_index, np.ndarray) and dataset_index.dtype.kind not in "iu":
            raise ValueError(f"dataset_index must hold integers, got a numpy array of dtype {dataset_index.dtype}")
        items = dataset_index.reshape(-1).tolist() if isinstance(dataset_index, np.ndarray) else dataset_index
        values, tensor = [_host_index(v, names, resolve_name) for v in items], None
    for v in values:
        if not 0 <= v < count:
            raise ValueError(f"{what} {v} is out of range: this model has {count} ({names} datasets)")
    if len(values) == 1 or (values and all(v == values[0] for v in values)):
        if len(values) not in (1, batch_size):
            raise ValueError(f"dataset_index has {len(values)} entries for a batch of {batch_size}")
        return DatasetRouting(
            torch.full((batch_size,), values[0], dtype=torch.long, device=device), [(values[0], None)]
        )
    if len(values) != batch_size:
        raise ValueError(f"dataset_index has {len(values)} entries for a batch of {batch_size}")
    if not values:  # an empty batch given as an empty tensor or list: dataset 0's layout
        return DatasetRouting(torch.zeros(0, dtype=torch.long, device=device), [(0, None)])
    present = sorted(set(values))
    order = [i for k in present for i, v in enumerate(values) if v == k]
    restore = [0] * len(order)
    for position, row in enumerate(order):
        restore[row] = position

    index = (
        tensor.to(device=device, dtype=torch.long) if tensor is not None else to_device(torch.tensor(values), device)
    )
    groups = [(k, to_device(torch.tensor([i for i, v in enumerate(values) if v == k]), device)) for k in present]
    return DatasetRouting(index, groups, to_device(torch.tensor(restore), device))


# ----------------------------------------------------------------------------------------------------------------
# Encoder blocks
# ----------------------------------------------------------------------------------------------------------------


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
        # dense (B, N, C) rows: a transposed view would be inherited by every residual add and LayerNorm input
        return x.flatten(2).transpose(1, 2).contiguous(), grid


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention on `(B, heads, N, D)` inputs -> output `(B, N, heads, D)` and probabilities `(B, heads, N, N)`.

    Same signature and output layout as transformers' attention interface functions.
    """
    weights = torch.matmul(query * scaling, key.transpose(-2, -1))  # official order: scale q, then q @ k^T
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = weights.softmax(dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(F.dropout(weights, p=dropout, training=module.training), value)
    return output.transpose(1, 2).contiguous(), weights


class ViTPoseAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (rows ordered [q | k | v] as in the official weights).

    The kernel comes from transformers' attention interface (`config._attn_implementation`: "eager", "sdpa",
    "flash_attention_2", ...), read on every call so that `set_attn_implementation` takes effect at once.
    """

    def __init__(self, config: ViTPoseConfig) -> None:
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.proj_drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, output_attentions: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`(B, N, C)` -> `(B, N, C)`, and the attention probabilities `(B, heads, N, N)` when asked for."""
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        implementation = self.config._attn_implementation
        # only eager computes the probabilities; it also takes an empty batch, which transformers' SDPA wrapper cannot
        if output_attentions or implementation in (None, "eager") or B == 0:
            interface = eager_attention_forward
        else:
            interface = ALL_ATTENTION_FUNCTIONS[implementation]
        out, weights = interface(
            self,
            q,
            k,
            v,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        out = self.proj_drop(self.proj(out.reshape(B, N, C)))
        return out, weights if output_attentions else None


class ViTPoseMLP(nn.Module):
    """Dense FFN: fc1 (C -> 4C), exact GELU, fc2 (4C -> C). `(B, N, C)` -> `(B, N, C)`."""

    def __init__(self, config: ViTPoseConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.act(self.fc1(x))))


class ViTPosePartiallySharedMLP(nn.Module):
    """ViTPose++ PS-FFN: a shared fc1, a shared fc2 to C - P channels and one expert (4C -> P) per dataset.

    `(B, N, C)` -> `(B, N, C)` with channels `[shared | expert]` (official order). Routing is hard, by dataset:
    each sample goes through fc2 and its own expert once, so the cost equals a dense FFN whatever the number of
    experts.
    """

    def __init__(self, config: ViTPoseConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = ACT2FN[config.hidden_act]
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size - config.part_features)
        self.experts = nn.ModuleList(
            nn.Linear(config.intermediate_size, config.part_features) for _ in range(config.num_experts)
        )
        self.drop = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, x: torch.Tensor, routing: DatasetRouting) -> torch.Tensor:
        h = self.act(self.fc1(x))

        def ffn(k: int, rows: torch.Tensor | None) -> torch.Tensor:
            part = h if rows is None else h.index_select(0, rows)
            return torch.cat([self.fc2(part), self.experts[k](part)], dim=-1)

        return self.drop(routing.gather(ffn))


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
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). `(B, N, C)` -> `(B, N, C)`."""

    def __init__(self, config: ViTPoseConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        self.routed = config.num_experts > 1
        self.norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attn = ViTPoseAttention(config)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = ViTPosePartiallySharedMLP(config) if self.routed else ViTPoseMLP(config)
        self.drop_path2 = DropPath(drop_path)

    def forward(
        self, x: torch.Tensor, routing: DatasetRouting | None = None, output_attentions: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        attn_out, attn = self.attn(self.norm1(x), output_attentions)
        x = x + self.drop_path1(attn_out)
        mlp_out = self.mlp(self.norm2(x), routing) if self.routed else self.mlp(self.norm2(x))
        x = x + self.drop_path2(mlp_out)
        return x, attn


# ----------------------------------------------------------------------------------------------------------------
# Pretrained-model base: init, dataset routing, training hooks
# ----------------------------------------------------------------------------------------------------------------


class ViTPosePreTrainedModel(PreTrainedModel):
    config_class = ViTPoseConfig
    base_model_prefix = "backbone"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _no_split_modules = ["ViTPoseBlock"]
    # the attention reads config._attn_implementation on every call, so switching it later is safe
    _can_set_attn_implementation_cached_value = True
    # forward takes no loss kwargs (Trainer must not pass num_items_in_batch)
    accepts_loss_kwargs = False

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, ViTPoseKnowledgeTokenProjection):
            # unit gain: the projected token starts at the scale of the teacher's token
            init.trunc_normal_(module.weight, std=module.in_features**-0.5)
            init.zeros_(module.bias)
        elif isinstance(module, (nn.Linear, ViTPosePatchEmbed)):
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
            if module.knowledge_token is not None:
                init.trunc_normal_(module.knowledge_token, std=std)

    def route(
        self,
        dataset_index: DatasetIndex | DatasetRouting | None,
        batch_size: int,
        device: torch.device,
        count: int | None = None,
        what: str = "dataset index",
    ) -> DatasetRouting:
        """Resolve `dataset_index` (int, name, sequence, numpy array or integer tensor) against `count` choices."""
        names = self.config.dataset_names
        count = len(names) if count is None else count
        return route_batch(dataset_index, batch_size, device, count, names, self.config.dataset_to_index, what)

    # ---- training hooks (timm style), used by the training script ---------------------------------------------
    def no_weight_decay(self) -> set[str]:
        """Parameter names excluded from weight decay: 1-D tensors (biases, norms) and the position embedding."""
        return {
            n
            for n, p in self.named_parameters()
            if p.ndim <= 1 or n.endswith(".bias") or "pos_embed" in n or "knowledge_token" in n
        }

    def layer_id(self, name: str) -> int:
        """Layer of a parameter for layer-wise lr decay: 0 embeddings, i + 1 block i, depth + 1 the rest."""
        name = name.removeprefix(f"{self.base_model_prefix}.")
        if name.startswith(("pos_embed", "patch_embed", "cls_token", "knowledge_token")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.config.num_hidden_layers + 1

    def param_groups(self, weight_decay: float = 0.1, layer_decay: float = 1.0) -> list[dict[str, Any]]:
        """AdamW parameter groups with the official layer-wise lr decay.

        `lr_scale = layer_decay ** (depth + 1 - id)`.
        """
        skip = self.no_weight_decay()
        top = self.config.num_hidden_layers + 1
        groups: dict[tuple[int, bool], dict[str, Any]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            layer, decay = self.layer_id(name), name not in skip
            group = groups.setdefault(
                (layer, decay),
                {
                    "params": [],
                    "names": [],
                    "weight_decay": weight_decay if decay else 0.0,
                    "lr_scale": layer_decay ** (top - layer),
                },
            )
            group["params"].append(param)
            group["names"].append(name)
        return list(groups.values())


def reject_unknown_kwargs(kwargs: dict[str, Any]) -> None:
    """TypeError naming unexpected keyword arguments (transformers' `flip_pairs=` gets a pointer)."""
    if not kwargs:
        return
    hint = ""
    if "flip_pairs" in kwargs:
        hint = (
            "; the flip test lives in the processor: run the model on processor.flip_pixel_values(pixel_values) "
            "and pass that output as flip_outputs= to post_process_pose_estimation"
        )
    raise TypeError(f"unexpected keyword argument(s) {sorted(kwargs)}{hint}")


def check_pixel_values(pixel_values: Any, num_channels: int) -> None:
    """Type and shape checks only: nothing here reads tensor values, so a forward never waits on the device.

    Finite values are checked where images enter (the processor), once, on the host.
    """
    if not isinstance(pixel_values, torch.Tensor):
        hint = " (convert with torch.from_numpy, or use the processor)" if isinstance(pixel_values, np.ndarray) else ""
        raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}{hint}")
    if pixel_values.ndim != 4 or pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values must have shape (batch, {num_channels}, height, width), got {tuple(pixel_values.shape)}"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a float tensor (normalised crops), got dtype {pixel_values.dtype}")


# ----------------------------------------------------------------------------------------------------------------
# Encoder
# ----------------------------------------------------------------------------------------------------------------


class ViTPoseKnowledgeTokenProjection(nn.Linear):
    """Trainable map of a knowledge token from the teacher's width to the encoder's: `(1, 1, C_t)` -> `(1, 1, C)`.

    The paper does not say how a token crosses widths; a learned linear projection is this package's choice.
    """


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
        # the paper's knowledge token (token-based distillation): one extra token after the patch tokens
        if config.knowledge_token:
            width = config.knowledge_token_width or config.hidden_size
            self.knowledge_token = nn.Parameter(torch.zeros(1, 1, width))
        else:
            self.register_parameter("knowledge_token", None)
        self.knowledge_token_proj = None
        if config.knowledge_token and (config.knowledge_token_width or config.hidden_size) != config.hidden_size:
            self.knowledge_token_proj = ViTPoseKnowledgeTokenProjection(
                config.knowledge_token_width, config.hidden_size
            )
        self.post_init()

    def add_knowledge_token(self, token: torch.Tensor | None = None) -> nn.Parameter:
        """Give the encoder a knowledge token (sets `config.knowledge_token`): a copy of `token` `(1, 1, C_t)`, or
        a new one `(1, 1, C)` drawn as at init. Returns the token parameter.

        When `C_t` differs from the encoder width `C` (a token from a teacher of another size), the encoder also gets
        a new `knowledge_token_proj` (`C_t` -> `C`, trainable) and `config.knowledge_token_width = C_t`.
        """
        width = self.config.hidden_size
        if token is None:
            token = torch.empty(1, 1, width, device=self.pos_embed.device, dtype=self.pos_embed.dtype)
            nn.init.trunc_normal_(token, std=self.config.initializer_range)
        if token.ndim != 3 or tuple(token.shape[:2]) != (1, 1) or token.shape[2] < 1:
            raise ValueError(f"a knowledge token has shape (1, 1, width), got {tuple(token.shape)}")
        token_width = int(token.shape[2])
        self.knowledge_token = nn.Parameter(token.detach().clone().to(self.pos_embed.device, self.pos_embed.dtype))
        self.knowledge_token_proj = None
        if token_width != width:
            proj = ViTPoseKnowledgeTokenProjection(token_width, width)
            self._init_weights(proj)
            self.knowledge_token_proj = proj.to(self.pos_embed.device, self.pos_embed.dtype)
        self.config.knowledge_token = True
        self.config.knowledge_token_width = None if token_width == width else token_width
        return self.knowledge_token

    def projected_knowledge_token(self) -> torch.Tensor | None:
        """The knowledge token at the encoder's width `(1, 1, C)` (through `knowledge_token_proj` when the token
        has another width), or None without a token."""
        if self.knowledge_token is None:
            return None
        if self.knowledge_token_proj is None:
            return self.knowledge_token
        return self.knowledge_token_proj(self.knowledge_token)

    def position_embedding(self, grid: tuple[int, int], interpolate: bool) -> torch.Tensor:
        """`(1, h*w, C)` position embedding for a token grid, slot 0 folded in."""
        extra, table = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        trained = tuple(self.config.patch_grid)
        if tuple(grid) != trained:
            if not interpolate:
                raise ValueError(
                    f"input gives a {grid[0]}x{grid[1]} token grid but the model was built for "
                    f"{self.config.image_size[0]}x{self.config.image_size[1]} pixels "
                    f"({trained[0]}x{trained[1]} tokens); "
                    f"set config.interpolate_pos_encoding=True (or pass interpolate_pos_encoding=True) to resize the "
                    f"position embedding"
                )
            table = resample_position_table(table, trained, grid)
        return table + extra

    def expert_routing(
        self, dataset_index: DatasetIndex | DatasetRouting | None, batch_size: int, device: torch.device
    ) -> DatasetRouting | None:
        """The expert of each sample (ViTPose++), or None for a dense encoder, which has no experts."""
        if self.config.num_experts == 1:
            return None
        return self.route(dataset_index, batch_size, device, count=self.config.num_experts, what="expert index")

    def forward(
        self,
        pixel_values: torch.Tensor,
        dataset_index: DatasetIndex | DatasetRouting | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        expert_index: DatasetIndex | DatasetRouting | None = None,
        **kwargs: Any,
    ) -> ViTPoseModelOutput | tuple:
        """
        Args:
            pixel_values: `(B, 3, height, width)` normalised crops.
            dataset_index: the expert of each sample (ViTPose++ only): an int, a name, a sequence or a `(B,)`
                integer tensor.
            expert_index: the same, by expert number; it wins over `dataset_index` (for checkpoints with more
                experts than datasets).

        Returns:
            tokens `(B, N, C)` and the feature map `(B, C, h, w)`. With a knowledge token (at width `C`, through
            `knowledge_token_proj` when it has another), `hidden_states` and `attentions` include it (last
            position); `last_hidden_state` and the feature map do not.
        """
        reject_unknown_kwargs(kwargs)
        check_pixel_values(pixel_values, self.config.num_channels)
        output_hidden_states = (
            output_hidden_states if output_hidden_states is not None else self.config.output_hidden_states
        )
        output_attentions = output_attentions if output_attentions is not None else self.config.output_attentions
        interpolate = (
            self.config.interpolate_pos_encoding if interpolate_pos_encoding is None else interpolate_pos_encoding
        )
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        selector = expert_index if expert_index is not None else dataset_index
        routing = self.expert_routing(selector, pixel_values.shape[0], pixel_values.device)

        x, grid = self.patch_embed(pixel_values.to(self.patch_embed.proj.weight.dtype))
        pos = self.position_embedding(grid, interpolate)
        x = self.pos_drop(x.to(pos.dtype) + pos)  # the residual stream keeps the parameters' dtype under autocast
        num_patches = x.shape[1]
        token = self.projected_knowledge_token()
        if token is not None:
            x = torch.cat([x, token.to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        hidden_states = (x,) if output_hidden_states else None
        attentions = () if output_attentions else None
        for block in self.blocks:
            x, attn = block(x, routing, output_attentions)
            if output_hidden_states:
                hidden_states += (x,)
            if output_attentions:
                attentions += (attn,)
        if self.knowledge_token is not None:
            x = x[:, :num_patches]
        x = self.last_norm(x)
        # contiguous NCHW: a strided view sends the heads' bf16 transposed convs down a path ~10x slower on CPU
        feature_maps = x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1]).contiguous()
        if not return_dict:
            return tuple(v for v in (x, feature_maps, hidden_states, attentions) if v is not None)
        return ViTPoseModelOutput(
            last_hidden_state=x, feature_maps=feature_maps, hidden_states=hidden_states, attentions=attentions
        )


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
    """Simple decoder: ReLU, bilinear x4 (align_corners=False), 3x3 conv. `(B, C, h, w)` -> `(B, K, 4h, 4w)`."""

    def __init__(self, config: ViTPoseConfig, num_keypoints: int) -> None:
        super().__init__()
        self.upsample_factor = config.upsample_factor
        self.final_layer = ViTPoseHeadFinalConv(config.hidden_size, num_keypoints, kernel_size=3, padding=1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(F.relu(features), scale_factor=self.upsample_factor, mode="bilinear", align_corners=False)
        return self.final_layer(up)


class ViTPoseMinimalHead(nn.Module):
    """Minimal decoder (the paper's decoder ablation): one linear map per token to K x r x r values, then pixel
    shuffle by r. `(B, C, h, w)` -> `(B, K, r*h, r*w)`; output pixel `(r*i + a, r*j + b)` of keypoint k is value
    `k*r*r + a*r + b` of token `(i, j)`."""

    def __init__(self, config: ViTPoseConfig, num_keypoints: int) -> None:
        super().__init__()
        self.upsample_factor = int(config.upsample_factor)
        self.proj = nn.Linear(config.hidden_size, num_keypoints * self.upsample_factor**2)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        values = self.proj(features.permute(0, 2, 3, 1))  # (B, h, w, K*r*r)
        return F.pixel_shuffle(values.permute(0, 3, 1, 2), self.upsample_factor)


HEAD_CLASSES: dict[str, type[nn.Module]] = {
    "classic": ViTPoseClassicHead,
    "simple": ViTPoseSimpleHead,
    "minimal": ViTPoseMinimalHead,
}


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
        self.heads = nn.ModuleList(HEAD_CLASSES[config.decoder](config, k) for k in config.num_keypoints)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        dataset_index: DatasetIndex | DatasetRouting | None = None,
        labels: torch.Tensor | None = None,
        target_weight: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        expert_index: DatasetIndex | DatasetRouting | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ViTPoseEstimatorOutput | tuple:
        """
        Args:
            pixel_values: `(B, 3, height, width)` normalised crops.
            dataset_index: the head (and expert) of each sample: one int or dataset name for the whole batch (no
                device work), or a sequence, numpy array or `(B,)` integer tensor (a tensor is read back once).
            labels: `(B, K, H, W)` target heatmaps (K at least each sample's keypoint count; extra channels ignored).
            target_weight: `(B, K)` or `(B, K, 1)` per-keypoint weights (visibility); ones when omitted.
            expert_index: overrides the expert only, for checkpoints with more experts than heads (transformers'
                ViTPose++ checkpoints, which kept the COCO head alone).

        Returns:
            `ViTPoseEstimatorOutput` with heatmaps `(B, K, H, W)`. An empty batch gives `(0, K, H, W)`.
        """
        reject_unknown_kwargs(kwargs)
        check_pixel_values(pixel_values, self.config.num_channels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        B, device = pixel_values.shape[0], pixel_values.device
        routing = self.route(dataset_index, B, device)
        if expert_index is None:
            # only dataset 0's head exists when experts outnumber heads; its expert is the matching one
            expert_index = 0 if self.config.num_experts > len(self.heads) else routing
        encoder_out = self.backbone(
            pixel_values,
            expert_index=expert_index,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        features = encoder_out.feature_maps
        counts = self.config.num_keypoints
        if routing.single is not None:
            heatmaps = self.heads[routing.single](features)
            num_keypoints = torch.full((B,), counts[routing.single], dtype=torch.long, device=device)
        else:
            max_k = max(counts[k] for k, _ in routing.groups)

            def head(k: int, rows: torch.Tensor) -> torch.Tensor:
                out = self.heads[k](features.index_select(0, rows))
                return F.pad(out, (0, 0, 0, 0, 0, max_k - out.shape[1]))  # zero channels past this head's K

            heatmaps = routing.gather(head)
            num_keypoints = to_device(torch.tensor(counts), device).index_select(0, routing.index)

        loss = None
        if labels is not None:
            loss = self.loss(heatmaps, routing, labels, target_weight)
        if not return_dict:
            out = (heatmaps, num_keypoints, routing.index) + tuple(
                v for v in (encoder_out.hidden_states, encoder_out.attentions) if v is not None
            )
            return ((loss,) + out) if loss is not None else out
        return ViTPoseEstimatorOutput(
            loss=loss,
            heatmaps=heatmaps,
            num_keypoints=num_keypoints,
            dataset_index=routing.index,
            hidden_states=encoder_out.hidden_states,
            attentions=encoder_out.attentions,
            datasets=tuple(self.config.datasets),
        )

    def loss(
        self, heatmaps: torch.Tensor, routing: DatasetRouting, labels: torch.Tensor, target_weight: torch.Tensor | None
    ) -> torch.Tensor:
        """Sum over the heads present of each head's loss on its own samples only."""
        B = heatmaps.shape[0]
        if labels.ndim != 4 or labels.shape[0] != B or labels.shape[-2:] != heatmaps.shape[-2:]:
            raise ValueError(
                f"labels must have shape (batch, K, {heatmaps.shape[-2]}, {heatmaps.shape[-1]}), "
                f"got {tuple(labels.shape)}"
            )
        if target_weight is None:
            target_weight = labels.new_ones(labels.shape[:2])
        if target_weight.ndim == 3:
            target_weight = target_weight.squeeze(-1)
        if target_weight.shape[:2] != labels.shape[:2]:
            raise ValueError(
                f"target_weight must have shape {tuple(labels.shape[:2])}, got {tuple(target_weight.shape)}"
            )
        total = heatmaps.new_zeros((), dtype=torch.float32)
        for k, rows in routing.groups:
            K = self.config.num_keypoints[k]
            if labels.shape[1] < K:
                raise ValueError(
                    f"labels have {labels.shape[1]} channels but dataset {self.config.dataset_names[k]!r} "
                    f"has {K} keypoints"
                )
            pred, gt, weight = (
                (heatmaps, labels, target_weight)
                if rows is None
                else (t.index_select(0, rows) for t in (heatmaps, labels, target_weight))
            )
            total = total + keypoint_mse_loss(pred[:, :K], gt[:, :K], weight[:, :K], max(B, 1))
        return total

    # ---- one dataset as a dense model -------------------------------------------------------------------------
    def single_dataset(self, dataset: int | str) -> ViTPoseForPoseEstimation:
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
                return load_transformers_vitpose(
                    cls, pretrained_model_name_or_path, *model_args, strict=strict, **kwargs
                )
        want_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path, *model_args, output_loading_info=True, **kwargs
        )
        problems = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if strict and problems:
            raise ValueError(f"checkpoint {pretrained_model_name_or_path} does not match the model: {problems}")
        return (model, info) if want_info else model


ViTPoseConfig.register_for_auto_class()
ViTPoseModel.register_for_auto_class("AutoModel")
ViTPoseForPoseEstimation.register_for_auto_class("AutoModelForPoseEstimation")

__all__ = [
    "DatasetRouting",
    "ViTPoseEstimatorOutput",
    "ViTPoseForPoseEstimation",
    "ViTPoseMinimalHead",
    "ViTPoseModel",
    "ViTPoseModelOutput",
    "ViTPosePreTrainedModel",
    "keypoint_mse_loss",
]
