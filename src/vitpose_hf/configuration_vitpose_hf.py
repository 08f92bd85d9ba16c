"""Configuration of ViTPose / ViTPose++ models (`model_type = "vitpose_hf"`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from transformers import PretrainedConfig

from .keypoint_metadata import VITPOSE_PLUS_DATASETS, builtin_dataset_name, get_dataset_info


@dataclass(frozen=True)
class PresetSize:
    """One paper size: the encoder shape and the official training recipe's per-size settings."""

    display_name: str  # "ViTPose-B"; ViTPose++ models show as "ViTPose++-B"
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    drop_path_rate: float
    layer_decay: float  # layer-wise lr decay, single-dataset recipe
    layer_decay_plus: float  # layer-wise lr decay, ViTPose++ recipe

    def name(self, plus: bool = False) -> str:
        return self.display_name.replace("ViTPose", "ViTPose++") if plus else self.display_name

    def decay(self, plus: bool = False) -> float:
        return self.layer_decay_plus if plus else self.layer_decay


# The one table of model sizes, from the official configs (ViTPose_{size}_coco_256x192.py, vitPose+_{size}_...).
# S has 12 heads (head dim 32), unlike timm's ViT-S.
PRESET_SIZES: dict[str, PresetSize] = {
    "s": PresetSize("ViTPose-S", 384, 12, 12, 0.1, 0.8, 0.8),
    "b": PresetSize("ViTPose-B", 768, 12, 12, 0.3, 0.75, 0.75),
    "l": PresetSize("ViTPose-L", 1024, 24, 16, 0.5, 0.8, 0.8),
    "h": PresetSize("ViTPose-H", 1280, 32, 16, 0.55, 0.85, 0.8),
}
# Views of PRESET_SIZES kept for importers: size -> (single, ViTPose++) decay, and width -> heads.
LAYER_DECAY: dict[str, tuple[float, float]] = {k: (p.layer_decay, p.layer_decay_plus) for k, p in PRESET_SIZES.items()}
HEADS_BY_WIDTH: dict[int, int] = {p.hidden_size: p.num_attention_heads for p in PRESET_SIZES.values()}
DECODERS = ("classic", "simple", "minimal")


def preset_size_key(hidden_size: int, num_hidden_layers: int) -> str | None:
    """Key of `PRESET_SIZES` (`"s"`, `"b"`, ...) with this width and depth, or None for other shapes."""
    for key, size in PRESET_SIZES.items():
        if (size.hidden_size, size.num_hidden_layers) == (hidden_size, num_hidden_layers):
            return key
    return None


def _preset_names() -> list[str]:
    names = []
    for size in PRESET_SIZES:
        for family in ("vitpose", "vitpose-plus"):
            names += [f"{family}-{size}", f"{family}-{size}-simple"]
    return names


class ViTPoseConfig(PretrainedConfig):
    r"""Configuration of a ViTPose encoder, its optional ViTPose++ experts and one heatmap head per dataset.

    Sizes are `(height, width)` in pixels. The defaults give ViTPose-B with the classic decoder for COCO.

    Args:
        image_size: input crop size `(height, width)`; also the size the position embedding was trained at.
        patch_size: side of the square patches.
        patch_padding: zero padding of the patch-embedding convolution (2 in the official models).
        hidden_size, num_hidden_layers, num_attention_heads, mlp_ratio: the plain ViT.
        layer_norm_eps: epsilon of every LayerNorm (1e-6 in the official models).
        qkv_bias: bias on the fused query/key/value projection.
        drop_path_rate: stochastic-depth rate of the last block (linear from 0 over depth).
        num_experts: 1 for a dense FFN; otherwise ViTPose++'s partially shared FFN with one expert per dataset.
        part_features: expert width `p` (fc2 keeps `hidden_size - p` shared channels); `hidden_size // 4` officially.
        decoder: `"classic"` (2 deconvolutions + 1x1 conv), `"simple"` (bilinear x4 + 3x3 conv) or `"minimal"`
            (the paper's decoder ablation: one linear map per token to K x r x r values, pixel shuffle by r).
        deconv_channels: width of the classic decoder's deconvolutions.
        upsample_factor: bilinear factor of the simple decoder; pixel-shuffle factor r of the minimal decoder.
        datasets: one entry per head, each a built-in dataset name (`"coco"`, `"aic"`, ...) or a metadata dict
            (see `keypoint_metadata`). Stored resolved, so keypoint names, flip pairs, skeleton and OKS sigmas
            travel with the checkpoint.
        interpolate_pos_encoding: allow inputs of another size by bicubic interpolation of the position embedding.
        knowledge_token: the encoder has a learnable `(1, 1, C)` token appended after the position embedding and
            dropped before the last norm (the paper's token-based distillation); it is not in the feature map.
        knowledge_token_width: width of that token when it differs from `hidden_size` (a token distilled from a
            teacher of another width); the encoder then has a trainable linear projection `(1, 1, width)` ->
            `(1, 1, hidden_size)` applied to it. None (or `hidden_size`): same width, no projection.
    """

    model_type = "vitpose_hf"

    def __init__(
        self,
        image_size: tuple[int, int] | list[int] = (256, 192),
        patch_size: int = 16,
        patch_padding: int = 2,
        num_channels: int = 3,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        mlp_ratio: float = 4.0,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        drop_path_rate: float = 0.0,
        initializer_range: float = 0.02,
        num_experts: int = 1,
        part_features: int = 0,
        decoder: str = "classic",
        deconv_channels: int = 256,
        upsample_factor: int = 4,
        datasets: list[str | dict] | None = None,
        interpolate_pos_encoding: bool = False,
        knowledge_token: bool = False,
        knowledge_token_width: int | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        self.image_size = [int(s) for s in image_size]
        self.patch_size = int(patch_size)
        self.patch_padding = int(patch_padding)
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.mlp_ratio = mlp_ratio
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.drop_path_rate = drop_path_rate
        self.initializer_range = initializer_range
        self.num_experts = num_experts
        self.part_features = part_features
        self.decoder = decoder
        self.deconv_channels = deconv_channels
        self.upsample_factor = upsample_factor
        self.datasets = [get_dataset_info(d) for d in (datasets if datasets is not None else ["coco"])]
        self.interpolate_pos_encoding = interpolate_pos_encoding
        self.knowledge_token = bool(knowledge_token)
        self.knowledge_token_width = None if knowledge_token_width is None else int(knowledge_token_width)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        if len(self.image_size) != 2 or min(self.image_size) <= 0:
            raise ValueError(f"image_size must be (height, width) with positive sides, got {self.image_size}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads ({self.num_attention_heads})"
            )
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if self.decoder != "classic" and int(self.upsample_factor) < 1:
            raise ValueError(f"upsample_factor must be a positive integer, got {self.upsample_factor}")
        if not self.datasets:
            raise ValueError("datasets must name at least one dataset")
        names = [d["name"] for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        if self.knowledge_token_width is not None:
            if not self.knowledge_token:
                raise ValueError("knowledge_token_width is set but knowledge_token is False")
            if self.knowledge_token_width < 1:
                raise ValueError(f"knowledge_token_width must be positive, got {self.knowledge_token_width}")
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.num_experts > 1:
            # one expert per dataset; a single head with several experts is what transformers' ViTPose++ keeps
            if self.num_experts != len(self.datasets) and len(self.datasets) != 1:
                raise ValueError(
                    f"a ViTPose++ model has one expert per dataset: num_experts={self.num_experts} but "
                    f"{len(self.datasets)} datasets {names}"
                )
            if not 0 < self.part_features < self.hidden_size:
                raise ValueError(
                    f"part_features must be in (0, hidden_size={self.hidden_size}) when num_experts > 1, "
                    f"got {self.part_features}"
                )

    # ---- derived values -------------------------------------------------------------------------------------
    @property
    def intermediate_size(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def patch_grid(self) -> tuple[int, int]:
        """Token grid `(height, width)` for `image_size`, counting the patch-embedding padding."""
        return tuple(
            (size + 2 * self.patch_padding - self.patch_size) // self.patch_size + 1 for size in self.image_size
        )

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """Output heatmap `(height, width)`: 4x the token grid (classic), `upsample_factor` x (simple, minimal)."""
        factor = 4 if self.decoder == "classic" else self.upsample_factor
        return tuple(g * factor for g in self.patch_grid)

    @property
    def dataset_names(self) -> list[str]:
        return [d["name"] for d in self.datasets]

    @property
    def num_keypoints(self) -> list[int]:
        return [len(d["keypoint_names"]) for d in self.datasets]

    def dataset_to_index(self, dataset: int | str) -> int:
        """Index of a dataset given by index or name; ValueError naming the choices otherwise.

        Names match exactly first, then ignoring case where that picks one dataset, then as a built-in alias
        (`"coco_wholebody"` -> `"wholebody"`). Custom names keep their case (`"MyRobot"`).
        """
        names = self.dataset_names
        if isinstance(dataset, str):
            if dataset in names:
                return names.index(dataset)
            folded = [i for i, name in enumerate(names) if name.casefold() == dataset.casefold()]
            if len(folded) > 1:
                raise ValueError(
                    f"dataset {dataset!r} matches several datasets of this checkpoint when case is ignored: "
                    f"{[names[i] for i in folded]}; give the exact name"
                )
            if folded:
                return folded[0]
            builtin = builtin_dataset_name(dataset)
            if builtin is not None and builtin in names:
                return names.index(builtin)
            raise ValueError(f"unknown dataset {dataset!r} for this checkpoint; it has {names}")
        if isinstance(dataset, bool):
            raise TypeError(f"dataset must be an index or a name, got {dataset!r}")
        index = int(dataset)
        if not 0 <= index < len(names):
            raise ValueError(
                f"dataset index {index} is out of range: this checkpoint has datasets 0..{len(names) - 1} {names}"
            )
        return index

    # ---- presets --------------------------------------------------------------------------------------------
    @classmethod
    def preset_names(cls) -> list[str]:
        return _preset_names()

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> ViTPoseConfig:
        """Paper configurations: `vitpose-{s,b,l,h}` and `vitpose-plus-{s,b,l,h}`, each with a `-simple` variant.

        ViTPose++ (`vitpose-plus-*`) has 6 experts of width C/4 and one head per dataset in the order
        COCO, AIC, MPII, AP-10K, APT-36K, COCO-WholeBody.
        """
        key = name.lower().replace("_", "-").replace("vitpose++", "vitpose-plus").replace("vitpose+", "vitpose-plus")
        if key not in _preset_names():
            raise ValueError(f"unknown preset {name!r}; choose from {_preset_names()}")
        parts = key.split("-")
        simple = parts[-1] == "simple"
        plus = parts[1] == "plus"
        size = parts[2] if plus else parts[1]
        preset = PRESET_SIZES[size]
        hidden = preset.hidden_size
        kwargs: dict[str, Any] = {
            "hidden_size": hidden,
            "num_hidden_layers": preset.num_hidden_layers,
            "num_attention_heads": preset.num_attention_heads,
            "drop_path_rate": preset.drop_path_rate,
            "decoder": "simple" if simple else "classic",
        }
        if plus:
            # released ViTPose++-S uses p = 96 = C/4 although its config says 192
            kwargs.update(
                num_experts=len(VITPOSE_PLUS_DATASETS), part_features=hidden // 4, datasets=list(VITPOSE_PLUS_DATASETS)
            )
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output["datasets"] = copy.deepcopy(self.datasets)
        return output


# Bottom-up gets its own config class and model_type (not a `paradigm` flag on ViTPoseConfig): the Auto classes map
# one model_type to one model class, so `AutoModelForPoseEstimation.from_pretrained` on a bottom-up checkpoint must
# see a different type to build ViTPoseForBottomUpPoseEstimation; it subclasses ViTPoseConfig so that the shared
# encoder (ViTPoseModel, which only reads ViTPoseConfig fields) takes it unchanged.
class ViTPoseBottomUpConfig(ViTPoseConfig):
    r"""Configuration of bottom-up ViTPose: the whole (padded, square) image in, every person's keypoints out.

    All `ViTPoseConfig` arguments apply (the encoder and decoder are the same); the defaults differ in
    `image_size` (512 x 512, a 32 x 32 token grid) and `interpolate_pos_encoding` (on, for multi-scale tests).
    Each head predicts, at the heatmap resolution (1/4 of the input with the classic decoder), K heatmaps followed
    by K x `tag_dim` associative-embedding tag maps (Newell et al., "Associative Embedding", NeurIPS 2017).

    Args:
        tag_dim: length of each keypoint's tag (1 as in the paper and HigherHRNet).
        heatmap_sigma: Gaussian sigma of the training targets, in heatmap pixels.
        heatmap_loss_weight, pull_loss_weight, push_loss_weight: weights of the masked heatmap MSE and of the
            associative-embedding pull (same person) and push (different people) terms.
        push_loss_type: `"exp"` (the paper's `exp(-d^2)`) or `"max"` (`max(0, 1 - d)`, which also pushes apart
            tags that start equal).
        max_people: most people decoded per image (top-k peaks per keypoint).
        detection_threshold: a peak below this heatmap value starts no person.
        tag_threshold: largest tag distance at which a peak joins a person.
    """

    model_type = "vitpose_hf_bottom_up"

    def __init__(
        self,
        image_size: tuple[int, int] | list[int] = (512, 512),
        interpolate_pos_encoding: bool = True,
        tag_dim: int = 1,
        heatmap_sigma: float = 2.0,
        heatmap_loss_weight: float = 1.0,
        pull_loss_weight: float = 1e-3,
        push_loss_weight: float = 1e-3,
        push_loss_type: str = "exp",
        max_people: int = 30,
        detection_threshold: float = 0.1,
        tag_threshold: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.tag_dim = int(tag_dim)
        self.heatmap_sigma = float(heatmap_sigma)
        self.heatmap_loss_weight = float(heatmap_loss_weight)
        self.pull_loss_weight = float(pull_loss_weight)
        self.push_loss_weight = float(push_loss_weight)
        self.push_loss_type = push_loss_type
        self.max_people = int(max_people)
        self.detection_threshold = float(detection_threshold)
        self.tag_threshold = float(tag_threshold)
        super().__init__(image_size=image_size, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)

    def _validate(self) -> None:
        super()._validate()
        if self.tag_dim < 1:
            raise ValueError(f"tag_dim must be >= 1, got {self.tag_dim}")
        if not self.heatmap_sigma > 0:
            raise ValueError(f"heatmap_sigma must be positive, got {self.heatmap_sigma}")
        if self.push_loss_type not in ("exp", "max"):
            raise ValueError(f"push_loss_type must be 'exp' or 'max', got {self.push_loss_type!r}")
        if self.max_people < 1:
            raise ValueError(f"max_people must be >= 1, got {self.max_people}")
        if not self.tag_threshold > 0:
            raise ValueError(f"tag_threshold must be positive, got {self.tag_threshold}")
        for name in ("heatmap_loss_weight", "pull_loss_weight", "push_loss_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def from_top_down(cls, config: ViTPoseConfig, image_size: tuple[int, int] = (512, 512), **overrides: Any):
        """The bottom-up configuration with the encoder, decoder and datasets of a top-down one."""
        values = config.to_dict()
        for key in ("model_type", "transformers_version", "architectures", "auto_map", "_name_or_path"):
            values.pop(key, None)
        values.update(image_size=list(image_size), interpolate_pos_encoding=True, knowledge_token=False)
        values.update(knowledge_token_width=None)
        values.update(overrides)
        return cls(**values)


__all__ = [
    "HEADS_BY_WIDTH",
    "LAYER_DECAY",
    "PRESET_SIZES",
    "PresetSize",
    "ViTPoseBottomUpConfig",
    "ViTPoseConfig",
    "preset_size_key",
]
