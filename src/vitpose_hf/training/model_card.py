"""Model cards for trained checkpoints: Hub metadata (licence, tags, datasets, base model, model-index with the
evaluation results) plus a short description, usage, training setup and citation.

Built with `huggingface_hub.ModelCard` / `ModelCardData` / `EvalResult`; the body is plain markdown (no template
engine needed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from vitpose_hf.configuration_vitpose_hf import PRESET_SIZES, ViTPoseConfig, preset_size_key

__all__ = ["CITATION", "build_model_card", "describe_size", "is_hub_id"]

CITATION = """@inproceedings{xu2022vitpose,
  title     = {{ViTPose}: Simple Vision Transformer Baselines for Human Pose Estimation},
  author    = {Xu, Yufei and Zhang, Jing and Zhang, Qiming and Tao, Dacheng},
  booktitle = {Advances in Neural Information Processing Systems},
  year      = {2022}
}
@article{xu2023vitposeplus,
  title   = {{ViTPose++}: Vision Transformer for Generic Body Pose Estimation},
  author  = {Xu, Yufei and Zhang, Jing and Zhang, Qiming and Tao, Dacheng},
  journal = {IEEE Transactions on Pattern Analysis and Machine Intelligence},
  year    = {2023}
}"""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_METRIC_NAMES = {
    "AP": "AP (OKS)",
    "AP50": "AP@0.5 (OKS)",
    "AP75": "AP@0.75 (OKS)",
    "AR": "AR (OKS)",
    "loss": "validation loss",
}


def is_hub_id(value: str | None) -> bool:
    """True for ``owner/name`` strings that are not existing local paths."""
    return bool(value) and not os.path.exists(str(value)) and bool(_HUB_ID.match(str(value)))


def describe_size(config: ViTPoseConfig) -> str:
    """``"ViTPose-B"``, ``"ViTPose++-B"`` or ``"ViT (hidden 32, 2 layers)"`` for other shapes."""
    size = preset_size_key(config.hidden_size, config.num_hidden_layers)
    if size is None:
        return f"ViT (hidden {config.hidden_size}, {config.num_hidden_layers} layers)"
    return PRESET_SIZES[size].name(plus=config.num_experts > 1)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def build_model_card(
    config: ViTPoseConfig,
    *,
    model_name: str,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    dataset_ids: Mapping[str, str] | None = None,
    base_model: str | None = None,
    training: Mapping[str, Any] | None = None,
    license: str = "apache-2.0",
    notes: Sequence[str] = (),
) -> ModelCard:
    """A filled-in model card.

    Args:
        config: the saved model's config (sizes, heads, keypoint layouts).
        model_name: name in the model-index (the Hub repo id when pushing).
        metrics: per keypoint layout (head) name, the validation metrics (``AP``, ``AP50``, ..., ``loss``).
        dataset_ids: per layout name, the dataset it was trained on (Hub id or local path; only Hub ids go into
            the ``datasets`` metadata).
        base_model: the checkpoint training started from (Hub id or path).
        training: hyperparameters shown in the card.
        license: licence of the weights.
        notes: extra lines for the description.
    """
    metrics = dict(metrics or {})
    dataset_ids = dict(dataset_ids or {})
    eval_results = []
    for name, values in metrics.items():
        source = dataset_ids.get(name)
        for key in ("AP", "AP50", "AP75", "AR", "loss"):
            value = values.get(key)
            if value is None or (key != "loss" and value < 0):
                continue
            eval_results.append(
                EvalResult(
                    task_type="keypoint-detection",
                    task_name="Pose estimation",
                    dataset_type=source if is_hub_id(source) else name,
                    dataset_name=name,
                    dataset_split="validation",
                    metric_type=key if key != "loss" else "loss",
                    metric_value=round(float(value), 6),
                    metric_name=_METRIC_NAMES[key],
                )
            )
    hub_datasets = sorted({v for v in dataset_ids.values() if is_hub_id(v)})
    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="keypoint-detection",
        tags=["vitpose", "vitpose-hf", "pose-estimation", "keypoint-detection", "vision"],
        datasets=hub_datasets or None,
        base_model=base_model if is_hub_id(base_model) else None,
        model_name=model_name,
        eval_results=eval_results or None,
    )
    size = describe_size(config)
    heads = ", ".join(f"`{d['name']}` ({len(d['keypoint_names'])} keypoints)" for d in config.datasets)
    height, width = config.image_size
    lines = [
        f"# {model_name}",
        "",
        f"{size} top-down pose estimator ({config.decoder} decoder) for {height}x{width} person/animal crops, trained "
        f"with vitpose-hf (Accelerate). Heads: {heads}."
        + (
            f" ViTPose++ experts: {config.num_experts} (width {config.part_features})."
            if config.num_experts > 1
            else ""
        ),
        "",
    ]
    if base_model:
        lines += [f"Initialised from `{base_model}`.", ""]
    lines += [*notes, ""] if notes else []
    lines += [
        "## Usage",
        "",
        "```python",
        "from PIL import Image",
        "import torch",
        "from vitpose_hf import ViTPoseForPoseEstimation",
        "from vitpose_hf.image_processing_vitpose_hf import ViTPoseImageProcessor",
        "",
        f'model = ViTPoseForPoseEstimation.from_pretrained("{model_name}")',
        f'processor = ViTPoseImageProcessor.from_pretrained("{model_name}")',
        'image = Image.open("people.jpg")',
        "boxes = [[10.0, 20.0, 120.0, 300.0]]  # person boxes, COCO xywh, from any detector",
        "inputs = processor(image, boxes=boxes)",
        "with torch.no_grad():",
        f"    outputs = model(inputs['pixel_values']{', dataset_index=0' if len(config.datasets) > 1 else ''})",
        "poses = processor.post_process_pose_estimation(outputs, crop_metadata=inputs)",
        "```",
        "",
        (
            "The checkpoint also loads with plain transformers: `AutoModelForPoseEstimation.from_pretrained(..., "
            "trust_remote_code=True)`."
        ),
        "",
    ]
    if metrics:
        keys = [k for k in ("AP", "AP50", "AP75", "AR", "loss") if any(k in v for v in metrics.values())]
        lines += [
            "## Evaluation",
            "",
            "Validation split, ground-truth boxes, COCO keypoint AP (OKS) through pycocotools.",
            "",
            "| dataset | " + " | ".join(keys) + " |",
            "|---" * (len(keys) + 1) + "|",
        ]
        for name, values in metrics.items():
            lines.append(f"| {name} | " + " | ".join(_fmt(values.get(k, "-")) for k in keys) + " |")
        lines.append("")
    if training:
        lines += ["## Training", "", "| hyperparameter | value |", "|---|---|"]
        lines += [f"| {key} | {_fmt(value)} |" for key, value in training.items()]
        lines.append("")
    lines += [
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)
