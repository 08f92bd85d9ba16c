"""Export to ONNX and torch.export ExportedProgram, optionally with the whole decoding inside the graph.

The graphs are built by wrapper modules around an unchanged :class:`ViTPoseForPoseEstimation`:

- :class:`HeatmapGraph`: ``pixel_values`` -> ``heatmaps`` (the names of transformers' own ViTPose ONNX export).
  A ViTPose++ model is either reduced to one dataset first (``single_dataset``: its expert merged into fc2), or
  exported with every expert and head and a ``dataset_index`` ``(B,)`` input, routed by gathers in the graph.
- :class:`DecodingGraph`: the same plus ``center`` / ``scale`` ``(B, 2)`` crop inputs (as ``preprocess`` returns
  them); outputs ``keypoints`` ``(B, K, 2)`` in image pixels and ``scores`` ``(B, K)``: arg-max, the UDP-DARK
  refinement (or the quarter-pixel step of non-UDP datasets) and the crop -> image map, as
  ``post_process_pose_estimation`` without the flip test.

Every graph has a dynamic batch axis. Inputs and outputs are float32 whatever the weights' dtype.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vitpose_hf.codecs import refine_keypoints_dark_udp, refine_keypoints_quarter_offset
from vitpose_hf.geometry import crop_to_image

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_FORMATS", "DecodingGraph", "HeatmapGraph", "export", "load_exported"]

EXPORT_FORMATS = ("onnx", "exported-program")
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16}
_DTYPES.update({"bfloat16": torch.bfloat16, "bf16": torch.bfloat16})
_SUFFIX = {"onnx": ".onnx", "exported-program": ".pt2"}
BF16_ONNX_MIN_OPSET = 22  # Conv / ConvTranspose / LayerNormalization accept bfloat16 from opset 22 on


def _resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unknown dtype {dtype}; choose from torch.bfloat16, torch.float16, torch.float32")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


class HeatmapGraph(nn.Module):
    """Export-friendly forward of a model: no host reads, so the batch size stays symbolic.

    Args:
        model: a ``ViTPoseForPoseEstimation``. With one dataset (or one expert) the model's own forward runs.
            With several, every head runs and each sample keeps its own (``dataset_index`` input); heatmaps are
            zero-padded to the largest keypoint count and ``num_keypoints`` ``(B,)`` is returned as well.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config = model.config
        self.multi = len(config.datasets) > 1
        self.dtype = next(model.parameters()).dtype
        if self.multi:
            if config.num_experts not in (1, len(config.datasets)):
                raise ValueError(
                    f"the model has {config.num_experts} experts for {len(config.datasets)} heads; export one "
                    "dataset (dataset=...) instead"
                )
            self.max_k = max(config.num_keypoints)
            self.register_buffer("counts", torch.tensor(config.num_keypoints), persistent=False)

    def _backbone(self, pixel_values: torch.Tensor, dataset_index: torch.Tensor) -> torch.Tensor:
        """The encoder with the expert of each sample picked by a gather (no split of the batch on the host)."""
        backbone = self.model.backbone
        x, grid = backbone.patch_embed(pixel_values)
        pos = backbone.position_embedding(grid, False)
        x = x.to(pos.dtype) + pos
        for block in backbone.blocks:
            x = x + block.attn(block.norm1(x))[0]
            y = block.norm2(x)
            if block.routed:
                mlp = block.mlp
                h = mlp.act(mlp.fc1(y))
                weight = torch.stack([e.weight for e in mlp.experts])[dataset_index]  # (B, P, M)
                bias = torch.stack([e.bias for e in mlp.experts])[dataset_index]  # (B, P)
                part = torch.bmm(h, weight.transpose(1, 2)) + bias.unsqueeze(1)
                x = x + torch.cat([mlp.fc2(h), part], dim=-1)
            else:
                x = x + block.mlp(y)
        x = backbone.last_norm(x)
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], grid[0], grid[1])

    def heatmaps(self, pixel_values: torch.Tensor, dataset_index: torch.Tensor | None = None) -> torch.Tensor:
        pixel_values = pixel_values.to(self.dtype)
        if not self.multi:
            return self.model(pixel_values, dataset_index=0, return_dict=True).heatmaps.float()
        features = self._backbone(pixel_values, dataset_index)
        out = torch.zeros(
            features.shape[0], self.max_k, *self.model.config.heatmap_size, dtype=torch.float32, device=features.device
        )
        for k, head in enumerate(self.model.heads):
            maps = head(features).float()
            maps = F.pad(maps, (0, 0, 0, 0, 0, self.max_k - maps.shape[1]))
            out = torch.where((dataset_index == k).view(-1, 1, 1, 1), maps, out)
        return out

    def forward(self, pixel_values: torch.Tensor, dataset_index: torch.Tensor | None = None):
        heatmaps = self.heatmaps(pixel_values, dataset_index)
        if not self.multi:
            return heatmaps
        return heatmaps, self.counts[dataset_index]


def _argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First maximum of each map (as the processor's numpy arg-max), in torch ops only."""
    n, k, h, w = heatmaps.shape
    flat = heatmaps.reshape(n, k, h * w)
    scores, index = flat.max(dim=-1)
    return torch.stack([index % w, index // w], dim=-1), scores


class DecodingGraph(HeatmapGraph):
    """:class:`HeatmapGraph` followed by the processor's decoding (no flip test).

    Args:
        model: as :class:`HeatmapGraph`.
        blur_kernel_size: the DARK blur kernel (11: sigma 2 by OpenCV's rule, the official setting).
    """

    def __init__(self, model: nn.Module, blur_kernel_size: int = 11) -> None:
        super().__init__(model)
        config = model.config
        self.blur_kernel_size = blur_kernel_size
        self.input_size = tuple(config.image_size)
        h, w = config.heatmap_size
        H, W = self.input_size
        flags = [bool(d.get("use_udp", True)) for d in config.datasets]
        self.all_udp, self.no_udp = all(flags), not any(flags)
        self.register_buffer("udp", torch.tensor(flags), persistent=False)
        # input pixels per heatmap pixel: (W-1)/(w-1) with UDP targets, W/w without
        self.register_buffer("udp_stride", torch.tensor([(W - 1) / (w - 1), (H - 1) / (h - 1)]), persistent=False)
        self.register_buffer("msra_stride", torch.tensor([W / w, H / h]), persistent=False)

    def forward(
        self,
        pixel_values: torch.Tensor,
        center: torch.Tensor,
        scale: torch.Tensor,
        dataset_index: torch.Tensor | None = None,
    ):
        heatmaps = self.heatmaps(pixel_values, dataset_index)
        locations, scores = _argmax(heatmaps)
        if self.all_udp or self.no_udp:
            if self.all_udp:
                crop = refine_keypoints_dark_udp(locations, heatmaps, self.blur_kernel_size) * self.udp_stride
            else:
                crop = refine_keypoints_quarter_offset(locations, heatmaps) * self.msra_stride
            use_udp: bool | torch.Tensor = self.all_udp
        else:  # ViTPose++ mixes UDP and classic datasets: decode both ways, keep each sample's own
            use_udp = self.udp[dataset_index]
            dark = refine_keypoints_dark_udp(locations, heatmaps, self.blur_kernel_size).float() * self.udp_stride
            quarter = refine_keypoints_quarter_offset(locations, heatmaps) * self.msra_stride
            crop = torch.where(use_udp.view(-1, 1, 1), dark, quarter)
        keypoints = crop_to_image(crop.float(), center.float(), scale.float(), self.input_size, None, use_udp)
        if not self.multi:
            return keypoints.float(), scores
        return keypoints.float(), scores, self.counts[dataset_index]


def _prepare_model(model: nn.Module, dataset: int | str | None, all_datasets: bool) -> nn.Module:
    config = model.config
    names = config.dataset_names
    if dataset is not None and all_datasets:
        raise ValueError("pass either dataset= (one head, expert merged) or all_datasets=True, not both")
    if dataset is not None:
        return model.single_dataset(dataset)
    if len(names) > 1 and not all_datasets:
        raise ValueError(
            f"this model has {len(names)} datasets {names}: pass dataset=<name or index> to export one head with "
            "its expert merged, or all_datasets=True to export every head with a dataset_index input"
        )
    if len(names) == 1 and config.num_experts > 1:
        return model.single_dataset(0)  # more experts than heads (transformers' ViTPose++): dataset 0's expert
    return model


def export(
    model: nn.Module | str | os.PathLike,
    out: str | os.PathLike,
    format: str = "onnx",
    dataset: int | str | None = None,
    dtype: str | torch.dtype | None = "float32",
    with_decoding: bool = False,
    overwrite: bool = False,
    all_datasets: bool = False,
    blur_kernel_size: int = 11,
    opset: int | None = None,
) -> Path:
    """Export a model to ONNX (``format="onnx"``) or a torch.export ExportedProgram (``"exported-program"``).

    Args:
        model: a ``ViTPoseForPoseEstimation`` or a path / Hub id to load one from.
        out: the file to write (``.onnx`` / ``.pt2``).
        dataset: for a model with several datasets: the one to export (its expert merged, its head alone).
        dtype: weights' dtype, ``float32`` / ``float16`` / ``bfloat16`` (inputs and outputs stay float32; the
            decoding runs in float32). bfloat16 ONNX needs ``opset >= 22``, and onnxruntime's CPU provider cannot
            run it; float16 ONNX runs there.
        with_decoding: put the decoding in the graph (inputs ``pixel_values``, ``center``, ``scale``; outputs
            ``keypoints`` ``(B, K, 2)`` image pixels and ``scores`` ``(B, K)``) instead of returning ``heatmaps``.
        overwrite: replace an existing ``out``; without it an existing file is an error.
        all_datasets: export every head of a multi-dataset model with a ``dataset_index`` ``(B,)`` int64 input
            (outputs gain ``num_keypoints`` ``(B,)``; keypoint channels are zero-padded to the largest K).

    Returns:
        The path written.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose from {', '.join(EXPORT_FORMATS)}")
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    torch_dtype = _resolve_dtype(dtype)
    if format == "onnx" and torch_dtype == torch.bfloat16:
        if opset is None or opset < BF16_ONNX_MIN_OPSET:
            raise ValueError(
                f"bfloat16 ONNX needs opset >= {BF16_ONNX_MIN_OPSET} (got {opset or 'the default'}): older opsets "
                "have no bfloat16 Conv, and onnxruntime's CPU provider has no bfloat16 Conv kernel at any opset. "
                "Use dtype='float16' for ONNX, format='exported-program' for bfloat16, or "
                f"opset={BF16_ONNX_MIN_OPSET} for a runtime with bfloat16 kernels"
            )
        logger.warning("bfloat16 ONNX: onnxruntime's CPU provider cannot run it (no bfloat16 Conv kernel)")
    if isinstance(model, (str, os.PathLike)):
        from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation

        model = ViTPoseForPoseEstimation.from_pretrained(model)
    prepared = _prepare_model(model, dataset, all_datasets)
    if prepared is model and next(model.parameters()).dtype != torch_dtype:
        prepared = copy.deepcopy(model)  # Module.to is in place: never change the caller's model
    model = prepared.eval().to(torch_dtype)
    graph = DecodingGraph(model, blur_kernel_size) if with_decoding else HeatmapGraph(model)
    graph.eval()

    config = model.config
    B = 2  # an example batch > 1, so that the exporter does not specialise the batch axis to 1
    H, W = config.image_size
    args: list[torch.Tensor] = [torch.randn(B, config.num_channels, H, W)]
    names = ["pixel_values"]
    if with_decoding:
        args += [torch.tensor([[100.0, 120.0], [50.0, 60.0]]), torch.tensor([[1.0, 1.3], [0.5, 0.7]])]
        names += ["center", "scale"]
    if graph.multi:
        args.append(torch.arange(B) % len(config.datasets))
        names.append("dataset_index")
    outputs = ["keypoints", "scores"] if with_decoding else ["heatmaps"]
    if graph.multi:
        outputs.append("num_keypoints")
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = {name: {0: batch} for name in names}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial")  # never leave a half-written file under the final name
    with torch.no_grad():
        if format == "exported-program":
            program = torch.export.export(graph, tuple(args), dynamic_shapes=dynamic, strict=False)
            with open(tmp, "wb") as handle:  # a file object: torch.export.save wants a .pt2 name otherwise
                torch.export.save(program, handle)
        else:
            onnx_program = torch.onnx.export(
                graph,
                tuple(args),
                input_names=names,
                output_names=outputs,
                dynamic_shapes=dynamic,
                dynamo=True,
                opset_version=opset,
                external_data=False,
            )
            onnx_program.save(str(tmp))
    if out.is_dir():
        shutil.rmtree(out)
    os.replace(tmp, out)
    logger.info("exported %s (%s, %s, inputs %s, outputs %s)", out, format, torch_dtype, names, outputs)
    return out


def load_exported(path: str | os.PathLike) -> Any:
    """Load an ``.pt2`` ExportedProgram (returns the callable module) or an ``.onnx`` file (an onnxruntime session)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnxruntime

        return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with open(path, "rb") as handle:
        return torch.export.load(handle).module()
