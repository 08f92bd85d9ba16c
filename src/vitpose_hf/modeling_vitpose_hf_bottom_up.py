"""Bottom-up ViTPose: the shared ViTPose / ViTPose++ encoder on the whole image, heatmaps plus associative embedding.

Grouping method: associative embedding (Newell et al., NeurIPS 2017), as HigherHRNet and mmpose's bottom-up
models. It was chosen because it needs only extra output channels of the same heatmap head (K tag maps next to
the K heatmaps), so the ViTPose decoders serve unchanged and a top-down checkpoint initialises everything but the
tag channels; offset-based methods (CenterNet, DEKR) need a second regression branch and their own decoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from .configuration_vitpose_hf import ViTPoseBottomUpConfig, ViTPoseConfig
from .conversion import resample_position_table
from .modeling_vitpose_hf import (
    HEAD_CLASSES,
    DatasetIndex,
    DatasetRouting,
    ViTPoseForPoseEstimation,
    ViTPoseModel,
    ViTPosePreTrainedModel,
    check_pixel_values,
    reject_unknown_kwargs,
)

__all__ = [
    "ViTPoseBottomUpOutput",
    "ViTPoseForBottomUpPoseEstimation",
    "associative_embedding_loss",
    "bottom_up_loss",
]


@dataclass
class ViTPoseBottomUpOutput(ModelOutput):
    """Output of `ViTPoseForBottomUpPoseEstimation`.

    Args:
        loss: heatmap + pull + push loss, when targets are given.
        heatmaps: `(B, K, h, w)` at 1/4 of the input (classic decoder).
        tags: `(B, K, L, h, w)` associative-embedding tags (L = `config.tag_dim`).
        dataset_index: `(B,)` dataset (head / expert) of each sample.
        datasets: the model's dataset metadata, in head order.
        loss_terms: `{"heatmap", "pull", "push"}` (weighted), when targets are given.
    """

    loss: torch.Tensor | None = None
    heatmaps: torch.Tensor | None = None
    tags: torch.Tensor | None = None
    dataset_index: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    datasets: tuple[dict[str, Any], ...] | None = None
    loss_terms: dict[str, torch.Tensor] | None = None


def associative_embedding_loss(
    tags: torch.Tensor, keypoint_indices: torch.Tensor, push_type: str = "exp"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pull and push terms of associative embedding, averaged over the images of the batch.

    Args:
        tags: `(B, K, L, h, w)` predicted tags.
        keypoint_indices: `(B, M, K, 2)` per image and person: flat heatmap index of each keypoint and 1 where it is
            labelled (padding people have all zeros; unlabelled people must not appear here).

    Pull: mean over people of the squared distance of their tags to their mean tag. Push: mean over ordered pairs of
    different people of `exp(-|mean_i - mean_j|^2)` (`push_type="exp"`, the paper's) or `max(0, 1 - |mean_i -
    mean_j|)` (`"max"`, whose gradient does not vanish when all tags start equal), halved (each pair counted once),
    as HigherHRNet's AE loss.
    """
    if push_type not in ("exp", "max"):
        raise ValueError(f"push_type must be 'exp' or 'max', got {push_type!r}")
    b, k, dim, h, w = tags.shape
    if keypoint_indices.ndim != 4 or keypoint_indices.shape[0] != b or keypoint_indices.shape[2] != k:
        raise ValueError(f"keypoint_indices must have shape ({b}, M, {k}, 2), got {tuple(keypoint_indices.shape)}")
    flat = tags.reshape(b, k, dim, h * w)
    index = keypoint_indices[..., 0].long().clamp(0, h * w - 1)  # (B, M, K)
    valid = keypoint_indices[..., 1].to(tags.dtype)  # (B, M, K)
    # (B, M, K, L): tag of person m's keypoint j read from map j
    picked = flat.permute(0, 1, 3, 2).unsqueeze(1).expand(-1, index.shape[1], -1, -1, -1)
    picked = picked.gather(3, index[..., None, None].expand(-1, -1, -1, 1, dim)).squeeze(3)
    counts = valid.sum(-1)  # (B, M)
    present = (counts > 0).to(tags.dtype)
    mean = (picked * valid[..., None]).sum(2) / counts.clamp_min(1)[..., None]  # (B, M, L)
    spread = (((picked - mean[:, :, None]) ** 2).sum(-1) * valid).sum(-1) / counts.clamp_min(1)  # (B, M)
    people = present.sum(-1)  # (B,)
    pull = (spread * present).sum(-1) / people.clamp_min(1)
    diff = ((mean[:, :, None] - mean[:, None]) ** 2).sum(-1)  # (B, M, M)
    pair = present[:, :, None] * present[:, None] * (1 - torch.eye(mean.shape[1], dtype=tags.dtype, device=tags.device))
    closeness = torch.exp(-diff) if push_type == "exp" else F.relu(1 - (diff + 1e-12).sqrt())
    push = (closeness * pair).sum((1, 2)) / (people * (people - 1)).clamp_min(1) * 0.5
    return pull.mean() if b else pull.sum(), push.mean() if b else push.sum()


def bottom_up_loss(
    heatmaps: torch.Tensor,
    tags: torch.Tensor,
    target_heatmaps: torch.Tensor,
    masks: torch.Tensor,
    keypoint_indices: torch.Tensor,
    weights: tuple[float, float, float] = (1.0, 1e-3, 1e-3),
    push_type: str = "exp",
) -> dict[str, torch.Tensor]:
    """Masked heatmap MSE plus associative-embedding pull / push.

    Args:
        heatmaps: `(B, K, h, w)` predictions; tags `(B, K, L, h, w)`.
        target_heatmaps: `(B, K, h, w)` multi-person Gaussian targets.
        masks: `(B, h, w)`, 0 in crowd regions and over unlabelled people, where the heatmap loss does not look.
        keypoint_indices: `(B, M, K, 2)`, see `associative_embedding_loss`.
        weights: heatmap, pull, push weights.
        push_type: see `associative_embedding_loss`.

    Returns:
        `{"loss", "heatmap", "pull", "push"}`, the three terms already weighted.
    """
    if target_heatmaps.shape != heatmaps.shape:
        raise ValueError(
            f"target_heatmaps must have the heatmaps' shape {tuple(heatmaps.shape)}, got {tuple(target_heatmaps.shape)}"
        )
    if masks.shape != (heatmaps.shape[0], *heatmaps.shape[2:]):
        raise ValueError(f"masks must have shape {(heatmaps.shape[0], *heatmaps.shape[2:])}, got {tuple(masks.shape)}")
    diff = (heatmaps.float() - target_heatmaps.float()) ** 2 * masks.float()[:, None]
    heatmap = diff.mean() * weights[0]
    pull, push = associative_embedding_loss(tags.float(), keypoint_indices, push_type)
    terms = {"heatmap": heatmap, "pull": pull * weights[1], "push": push * weights[2]}
    return {"loss": terms["heatmap"] + terms["pull"] + terms["push"], **terms}


class ViTPoseForBottomUpPoseEstimation(ViTPosePreTrainedModel):
    """ViTPose encoder on the whole image plus, per dataset, a head with K heatmaps and K x L tag maps.

    The encoder is `ViTPoseModel` (dense or ViTPose++ PS-FFN, routed by `dataset_index` as in the top-down model);
    its position embedding is built for `config.image_size` (512 x 512: a 32 x 32 grid) and resized for other
    input sizes. The heads are the top-down decoders (`config.decoder`) with `K * (1 + L)` output channels.
    """

    config_class = ViTPoseBottomUpConfig

    def __init__(self, config: ViTPoseBottomUpConfig) -> None:
        super().__init__(config)
        self.backbone = ViTPoseModel(config)
        self.heads = nn.ModuleList(
            HEAD_CLASSES[config.decoder](config, k * (1 + config.tag_dim)) for k in config.num_keypoints
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        dataset_index: DatasetIndex | DatasetRouting | None = None,
        target_heatmaps: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        keypoint_indices: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        output_attentions: bool | None = None,
        interpolate_pos_encoding: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> ViTPoseBottomUpOutput | tuple:
        """
        Args:
            pixel_values: `(B, 3, S, S)` normalised padded images (`ViTPoseBottomUpImageProcessor`).
            dataset_index: head and expert of each sample (int, name, sequence or `(B,)` tensor); optional for a
                one-dataset model. A batch that mixes datasets gives K of the largest head, zero-padded.
            target_heatmaps, masks, keypoint_indices: training targets (all three, see `bottom_up_loss`).

        Returns:
            `ViTPoseBottomUpOutput` with `heatmaps` `(B, K, h, w)` and `tags` `(B, K, L, h, w)`.
        """
        reject_unknown_kwargs(kwargs)
        check_pixel_values(pixel_values, self.config.num_channels)
        return_dict = return_dict if return_dict is not None else self.config.return_dict
        b, device = pixel_values.shape[0], pixel_values.device
        routing = self.route(dataset_index, b, device)
        encoder_out = self.backbone(
            pixel_values,
            expert_index=routing,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
        )
        features = encoder_out.feature_maps
        counts, dim = self.config.num_keypoints, self.config.tag_dim
        max_k = max(counts[k] for k, _ in routing.groups)

        def head(k: int, rows: torch.Tensor | None) -> torch.Tensor:
            out = self.heads[k](features if rows is None else features.index_select(0, rows))
            n, _, h, w = out.shape
            heat, tag = out[:, : counts[k]], out[:, counts[k] :].reshape(n, counts[k], dim, h, w)
            pad = max_k - counts[k]
            return (
                torch.cat([heat, tag.flatten(1, 2)], 1)
                if not pad
                else torch.cat(
                    [F.pad(heat, (0, 0, 0, 0, 0, pad)), F.pad(tag, (0, 0, 0, 0, 0, 0, 0, pad)).flatten(1, 2)], 1
                )
            )

        out = routing.gather(head)
        n, _, h, w = out.shape
        heatmaps, tags = out[:, :max_k], out[:, max_k:].reshape(n, max_k, dim, h, w)

        loss = terms = None
        given = [t is not None for t in (target_heatmaps, masks, keypoint_indices)]
        if any(given):
            if not all(given):
                raise ValueError("training needs target_heatmaps, masks and keypoint_indices together")
            c = self.config
            terms = bottom_up_loss(
                heatmaps,
                tags,
                target_heatmaps,
                masks,
                keypoint_indices,
                (c.heatmap_loss_weight, c.pull_loss_weight, c.push_loss_weight),
                c.push_loss_type,
            )
            loss = terms.pop("loss")
        if not return_dict:
            values = (heatmaps, tags, routing.index)
            return ((loss,) + values) if loss is not None else values
        return ViTPoseBottomUpOutput(
            loss=loss,
            heatmaps=heatmaps,
            tags=tags,
            dataset_index=routing.index,
            hidden_states=encoder_out.hidden_states,
            attentions=encoder_out.attentions,
            datasets=tuple(self.config.datasets),
            loss_terms=terms,
        )

    # ---- from a top-down model ------------------------------------------------------------------------------------
    @classmethod
    def from_top_down(
        cls, model: ViTPoseForPoseEstimation | str, image_size: tuple[int, int] = (512, 512), **config_overrides: Any
    ) -> ViTPoseForBottomUpPoseEstimation:
        """A bottom-up model initialised from a top-down one (a model or anything `from_pretrained` loads).

        The encoder is copied with its position table resized (bicubic, `conversion.resample_position_table`)
        from the top-down grid to the bottom-up one; each head keeps the top-down decoder and heatmap channels,
        and its tag channels start from the usual head init.
        """
        if not isinstance(model, ViTPoseForPoseEstimation):
            model = ViTPoseForPoseEstimation.from_pretrained(model)
        source_config: ViTPoseConfig = model.config
        config = ViTPoseBottomUpConfig.from_top_down(source_config, image_size, **config_overrides)
        target = cls(config)
        state = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.knowledge_token")}
        table = state["backbone.pos_embed"]
        resized = resample_position_table(table[:, 1:], tuple(source_config.patch_grid), tuple(config.patch_grid))
        state["backbone.pos_embed"] = torch.cat([table[:, :1], resized], dim=1)
        own = target.state_dict()
        for name, value in state.items():
            if name not in own:
                continue
            if own[name].shape != value.shape:
                # the final layer: the first K output channels are the heatmaps, the tag channels keep their init
                if name.startswith("heads.") and own[name].shape[1:] == value.shape[1:]:
                    merged = own[name].clone()
                    merged[: value.shape[0]] = value
                    value = merged
                else:
                    raise ValueError(f"cannot transfer {name}: {tuple(value.shape)} -> {tuple(own[name].shape)}")
            own[name] = value
        target.load_state_dict(own, strict=True)
        return target


ViTPoseBottomUpConfig.register_for_auto_class()
ViTPoseForBottomUpPoseEstimation.register_for_auto_class("AutoModelForPoseEstimation")
