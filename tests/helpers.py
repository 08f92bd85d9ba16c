"""Shared builders for tests: tiny configs and an independent re-implementation of the official forward pass."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vitpose_hf import ViTPoseConfig

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=(64, 48), patch_size=8)
PLUS_K = [17, 14, 16, 17, 17, 133]


def tiny_config(**overrides) -> ViTPoseConfig:
    return ViTPoseConfig(**{**TINY, **overrides})


def tiny_plus_config(**overrides) -> ViTPoseConfig:
    return ViTPoseConfig.from_preset("vitpose-plus-b", **{**TINY, "part_features": 8, **overrides})


def randomize_batchnorm(model: torch.nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial statistics so that eval-mode parity checks mean something."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))


def official_state_dict(
    hidden=32, depth=2, patch=8, grid=(8, 6), experts=0, part=8, classic=True, head_k=(17,), cls_token=False, seed=0
):
    """Random tensors with the key names and shapes of an official mmpose ViTPose / ViTPose++ checkpoint."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.05):
        return torch.randn(*shape, generator=g) * scale

    C, M = hidden, 4 * hidden
    sd = {
        "backbone.patch_embed.proj.weight": r(C, 3, patch, patch),
        "backbone.patch_embed.proj.bias": r(C),
        "backbone.pos_embed": r(1, grid[0] * grid[1] + 1, C, scale=0.5),
        "backbone.last_norm.weight": 1 + r(C),
        "backbone.last_norm.bias": r(C),
    }
    if cls_token:
        sd["backbone.cls_token"] = r(1, 1, C)
    for i in range(depth):
        p = f"backbone.blocks.{i}."
        sd.update(
            {
                p + "norm1.weight": 1 + r(C),
                p + "norm1.bias": r(C),
                p + "attn.qkv.weight": r(3 * C, C, scale=0.2),
                p + "attn.qkv.bias": r(3 * C),
                p + "attn.proj.weight": r(C, C, scale=0.2),
                p + "attn.proj.bias": r(C),
                p + "norm2.weight": 1 + r(C),
                p + "norm2.bias": r(C),
                p + "mlp.fc1.weight": r(M, C, scale=0.2),
                p + "mlp.fc1.bias": r(M),
                p + "mlp.fc2.weight": r(C - (part if experts else 0), M, scale=0.2),
                p + "mlp.fc2.bias": r(C - (part if experts else 0)),
            }
        )
        for e in range(experts):
            sd[p + f"mlp.experts.{e}.weight"] = r(part, M, scale=0.2)
            sd[p + f"mlp.experts.{e}.bias"] = r(part)
    for h, k in enumerate(head_k):
        p = "keypoint_head." if h == 0 else f"associate_keypoint_heads.{h - 1}."
        if classic:
            sd[p + "deconv_layers.0.weight"] = r(C, 16, 4, 4, scale=0.2)
            sd[p + "deconv_layers.3.weight"] = r(16, 16, 4, 4, scale=0.2)
            for j in (1, 4):
                sd.update(
                    {
                        p + f"deconv_layers.{j}.weight": 1 + r(16),
                        p + f"deconv_layers.{j}.bias": r(16),
                        p + f"deconv_layers.{j}.running_mean": r(16),
                        p + f"deconv_layers.{j}.running_var": 1 + r(16).abs(),
                        p + f"deconv_layers.{j}.num_batches_tracked": torch.tensor(100),
                    }
                )
            sd[p + "final_layer.weight"] = r(k, 16, 1, 1, scale=0.3)
        else:
            sd[p + "final_layer.weight"] = r(k, C, 3, 3, scale=0.3)
        sd[p + "final_layer.bias"] = r(k)
    return sd


def official_forward(
    sd: dict, x: torch.Tensor, dataset: int = 0, num_heads: int = 4, eps: float = 1e-6
) -> torch.Tensor:
    """The official ViTPose / ViTPose++ forward written with functional ops on the official keys.

    Follows mmpose's ViT/ViTMoE + TopdownHeatmapSimpleHead: padding-2 patch embed, pos_embed[1:] + pos_embed[:1],
    every expert run and masked by the dataset index, head `keypoint_head` (0) or `associate_keypoint_heads.{d-1}`.
    """
    W = sd["backbone.patch_embed.proj.weight"]
    patch = W.shape[-1]
    t = F.conv2d(x, W, sd["backbone.patch_embed.proj.bias"], stride=patch, padding=2)
    B, C, h, w = t.shape
    t = t.flatten(2).transpose(1, 2)
    pos = sd["backbone.pos_embed"]
    t = t + pos[:, 1:] + pos[:, :1]
    depth = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("backbone.blocks."))
    D = C // num_heads
    index = torch.full((B, 1, 1), dataset)
    for i in range(depth):
        p = f"backbone.blocks.{i}."
        y = F.layer_norm(t, (C,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        qkv = (
            F.linear(y, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
            .reshape(B, -1, 3, num_heads, D)
            .permute(2, 0, 3, 1, 4)
        )
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q * D**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        o = (attn @ v).transpose(1, 2).reshape(B, -1, C)
        t = t + F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        y = F.layer_norm(t, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        hid = F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))
        shared = F.linear(hid, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        n_exp = len([k for k in sd if k.startswith(p + "mlp.experts.") and k.endswith(".weight")])
        if n_exp and shared.shape[-1] < C:
            routed = 0
            for e in range(n_exp):  # the official way: every expert on every sample, masked
                routed = routed + F.linear(hid, sd[p + f"mlp.experts.{e}.weight"], sd[p + f"mlp.experts.{e}.bias"]) * (
                    index == e
                )
            shared = torch.cat([shared, routed], dim=-1)
        t = t + shared
    t = F.layer_norm(t, (C,), sd["backbone.last_norm.weight"], sd["backbone.last_norm.bias"], eps)
    f = t.transpose(1, 2).reshape(B, C, h, w)
    p = "keypoint_head." if dataset == 0 else f"associate_keypoint_heads.{dataset - 1}."
    if p + "deconv_layers.0.weight" in sd:
        for j in (0, 3):
            f = F.conv_transpose2d(f, sd[p + f"deconv_layers.{j}.weight"], stride=2, padding=1)
            b = p + f"deconv_layers.{j + 1}."
            f = F.relu(
                F.batch_norm(
                    f, sd[b + "running_mean"], sd[b + "running_var"], sd[b + "weight"], sd[b + "bias"], False, 0.0, 1e-5
                )
            )
        return F.conv2d(f, sd[p + "final_layer.weight"], sd[p + "final_layer.bias"])
    f = F.interpolate(F.relu(f), scale_factor=4, mode="bilinear", align_corners=False)
    return F.conv2d(f, sd[p + "final_layer.weight"], sd[p + "final_layer.bias"], padding=1)


def to_official_keys(state_dict: dict) -> dict:
    """Our state-dict keys renamed to the official mmpose ones (`heads.0` -> `keypoint_head`, ...)."""
    sd = {}
    for k, v in state_dict.items():
        if k.startswith("heads.0."):
            sd["keypoint_head." + k[8:]] = v
        elif k.startswith("heads."):
            i, rest = k[6:].split(".", 1)
            sd[f"associate_keypoint_heads.{int(i) - 1}.{rest}"] = v
        else:
            sd[k] = v
    return sd


_PEAK_TAPS = [(0.0, 1.0, 0.5), (0.5, 1.0, 0.0), (0.25, 1.0, 0.6), (0.6, 1.0, 0.25), (0.4, 1.0, 0.1), (0.1, 1.0, 0.4)]


def peaked_model(config: ViTPoseConfig, seed: int = 0, expert_scale: float = 0.0):
    """A tiny simple-decoder model whose keypoint k has one clear heatmap peak at a fixed crop position.

    A random model's heatmaps are nearly flat with near-ties (any rounding flips the arg-max, and DARK's Taylor
    step is ill-conditioned there), as a trained model's clear peaks are not. Here the blocks are identities (the
    ViTPose++ experts scaled by `expert_scale`) and the position embedding puts a large value in channel j at the
    interior token `cells[j]` (channel C-1 elsewhere), so after the LayerNorm and ReLU only that token lights
    channel j. Keypoint k reads channel k mod len(cells) through an asymmetric 3x3 kernel (first one
    [0, 1, .5] x [0, 1, .5]) on the bilinear x4 tent: one untied maximum at a sub-pixel offset per keypoint.
    A small patch embedding keeps the image in play. Returns the model and the cells.
    """
    from vitpose_hf import ViTPoseForPoseEstimation

    torch.manual_seed(seed)
    model = ViTPoseForPoseEstimation(config).eval()
    width, (rows, cols) = config.hidden_size, config.patch_grid
    cells = [(r, c) for r in range(1, rows - 1) for c in range(1, cols - 1)][: width - 1]
    with torch.no_grad():
        for block in model.backbone.blocks:
            for p in (block.attn.proj.weight, block.attn.proj.bias, block.mlp.fc2.weight, block.mlp.fc2.bias):
                p.zero_()
            for expert in getattr(block.mlp, "experts", []):
                expert.weight.mul_(expert_scale)
                expert.bias.mul_(expert_scale)
        model.backbone.patch_embed.proj.weight.mul_(0.25)
        table = torch.zeros(rows * cols, width)
        table[:, width - 1] = 8.0
        for channel, (r, c) in enumerate(cells):
            table[r * cols + c] = 0.0
            table[r * cols + c, channel] = 8.0
        model.backbone.pos_embed.copy_(torch.cat([torch.zeros(1, width), table])[None])
        for head in model.heads:
            conv = head.final_layer
            conv.weight.zero_()
            conv.bias.zero_()
            for k in range(conv.out_channels):
                variant = k // len(cells)
                ty = torch.tensor(_PEAK_TAPS[variant % 6])
                tx = ty if variant == 0 else torch.tensor(_PEAK_TAPS[(variant + 2) % 6])
                conv.weight[k, k % len(cells)] = 0.1 * torch.outer(ty, tx)
    return model, cells
