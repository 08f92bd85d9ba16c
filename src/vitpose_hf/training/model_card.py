"""Model cards: Hub metadata plus a markdown body, for released checkpoints and for trained ones.

One builder, :func:`build_model_card`, serves the release tool (:mod:`vitpose_hf.release`, which also writes the
committed ``model_cards/``) and the training script. The card's numbers are computed here from the config, never
typed in: :func:`count_parameters` and :func:`flops_per_crop` count them from the shapes (FLOPs of one crop's
forward pass, a multiply-add as two operations, as ``torch.utils.flop_counter`` counts; the tests check both
against a built model).
Figures the authors reported go into the model-index labelled as theirs (``source_name``), until we measure our own.

Built with `huggingface_hub.ModelCard` / `ModelCardData` / `EvalResult`; the body is plain markdown.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from vitpose_hf.configuration_vitpose_hf import PRESET_SIZES, ViTPoseConfig, preset_size_key

__all__ = [
    "CITATION",
    "DATA_TERMS",
    "ReportedFigure",
    "build_model_card",
    "count_parameters",
    "describe_size",
    "flops_per_crop",
    "is_hub_id",
    "official_recipe",
    "usage_snippets",
]

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

AUTHORS_SOURCE = "Reported by the authors (ViTPose repository README), not measured by vitpose-hf"
AUTHORS_URL = "https://github.com/ViTAE-Transformer/ViTPose"

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_METRIC_NAMES = {
    "AP": "AP (OKS)",
    "AP50": "AP@0.5 (OKS)",
    "AP75": "AP@0.75 (OKS)",
    "AR": "AR (OKS)",
    "PCKh": "PCKh@0.5 (mean)",
    "loss": "validation loss",
}


@dataclass(frozen=True)
class ReportedFigure:
    """One result the authors published: a metric of one head on one benchmark split, in percent."""

    dataset: str  # head name: "coco", "mpii", ...
    metric: str  # "AP", "AR", "PCKh"
    value: float
    benchmark: str  # what was measured: "COCO val2017 (person detections with 56 AP, flip test)"
    split: str  # "validation" / "test"


@dataclass(frozen=True)
class DataTerms:
    """What a card says about a training dataset: its name, its id in the card metadata, its terms of use."""

    display_name: str
    card_id: str
    terms: str
    research_only: bool


DATA_TERMS: dict[str, DataTerms] = {
    "coco": DataTerms("COCO", "coco", "annotations CC BY 4.0, images under the Flickr terms of use", False),
    "aic": DataTerms("AI Challenger", "ai-challenger", "the AI Challenger terms of use", False),
    "mpii": DataTerms("MPII Human Pose", "mpii", "research use only (non-commercial)", True),
    "ap10k": DataTerms("AP-10K", "ap-10k", "the AP-10K terms of use", False),
    "apt36k": DataTerms("APT-36K", "apt-36k", "the APT-36K terms of use", False),
    "wholebody": DataTerms("COCO-WholeBody", "coco-wholebody", "research use only (non-commercial)", True),
}


def is_hub_id(value: str | None) -> bool:
    """True for ``owner/name`` strings that are not existing local paths."""
    return bool(value) and not os.path.exists(str(value)) and bool(_HUB_ID.match(str(value)))


def _token_params(config: ViTPoseConfig) -> int:
    """The knowledge token's parameters: the token (the teacher's width) plus, across widths, its projection."""
    width = config.hidden_size
    token_width = getattr(config, "knowledge_token_width", None) or width
    return token_width + (token_width * width + width if token_width != width else 0)


def describe_size(config: ViTPoseConfig) -> str:
    """``"ViTPose-B"``, ``"ViTPose++-B"`` or ``"ViT (hidden 32, 2 layers)"`` for other shapes."""
    size = preset_size_key(config.hidden_size, config.num_hidden_layers)
    if size is None:
        return f"ViT (hidden {config.hidden_size}, {config.num_hidden_layers} layers)"
    return PRESET_SIZES[size].name(plus=config.num_experts > 1)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------------------------------------------
# Numbers computed from the config
# ----------------------------------------------------------------------------------------------------------------
def count_parameters(config: ViTPoseConfig) -> dict[str, Any]:
    """Parameters of the model ``config`` describes, counted from the shapes (no model is built).

    Returns ``{"total": int, "active": [int per dataset]}``; ``active[k]`` counts what one crop of dataset ``k``
    runs through: the shared weights, expert ``k`` and head ``k`` (equal to ``total`` for a one-head dense model).
    """
    gh, gw = config.patch_grid
    c, hidden, p = config.hidden_size, config.intermediate_size, config.part_features
    token = _token_params(config) if config.knowledge_token else 0
    embed = c * config.num_channels * config.patch_size**2 + c + (gh * gw + 1) * c + token
    block = 4 * c + (3 * c * c + 3 * c) + (c * c + c) + (hidden * c + hidden)  # 2 norms, qkv, proj, fc1
    experts = 0
    if config.num_experts > 1:
        block += (c - p) * hidden + (c - p)  # shared part of fc2
        experts = config.num_hidden_layers * (p * hidden + p)  # one expert, all blocks
    else:
        block += c * hidden + c
    shared = embed + config.num_hidden_layers * block + 2 * c  # + the last norm

    def head(k: int) -> int:
        if config.decoder == "classic":
            d = config.deconv_channels
            return c * d * 16 + 2 * d + d * d * 16 + 2 * d + d * k + k  # BatchNorm statistics are buffers
        if config.decoder == "simple":
            return c * k * 9 + k
        r2 = int(config.upsample_factor) ** 2
        return c * k * r2 + k * r2

    heads = [head(k) for k in config.num_keypoints]
    total = shared + config.num_experts * experts + sum(heads) if config.num_experts > 1 else shared + sum(heads)
    active = [shared + experts + h for h in heads]
    return {"total": total, "active": active}


def flops_per_crop(config: ViTPoseConfig, dataset: int | str = 0) -> int:
    """Floating-point operations of one forward pass of one crop through head ``dataset``.

    Counted from the shapes, as ``torch.utils.flop_counter`` counts: two per multiply-add of the convolutions,
    linear layers and attention products; normalisation, activations and resampling are not counted.
    """
    gh, gw = config.patch_grid
    tokens = gh * gw + (1 if config.knowledge_token else 0)
    c, hidden = config.hidden_size, config.intermediate_size
    k = config.num_keypoints[config.dataset_to_index(dataset)]
    patch = 2 * gh * gw * c * config.num_channels * config.patch_size**2
    token_width = getattr(config, "knowledge_token_width", None) or c
    if config.knowledge_token and token_width != c:  # the token's projection from the teacher's width
        patch += 2 * token_width * c
    attention = 2 * tokens * c * 3 * c + 2 * 2 * tokens * tokens * c + 2 * tokens * c * c  # qkv, QK^T and AV, proj
    mlp = 2 * 2 * tokens * c * hidden  # fc1, and fc2 (the shared part plus one expert: the same width)
    if config.decoder == "classic":
        d = config.deconv_channels
        head = 2 * c * d * 16 * gh * gw + 2 * d * d * 16 * (2 * gh) * (2 * gw) + 2 * d * k * (4 * gh) * (4 * gw)
    elif config.decoder == "simple":
        u = config.upsample_factor
        head = 2 * c * k * 9 * (u * gh) * (u * gw)
    else:  # minimal: one linear map per token
        r = config.upsample_factor
        head = 2 * gh * gw * c * k * r * r
    return patch + config.num_hidden_layers * (attention + mlp) + head


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M"


def _giga(n: int) -> str:
    return f"{n / 1e9:.2f}"


# ----------------------------------------------------------------------------------------------------------------
# Card sections
# ----------------------------------------------------------------------------------------------------------------
def usage_snippets(config: ViTPoseConfig, model_name: str, weights_format: str = "vitpose_hf") -> list[tuple[str, str]]:
    """``(title, python code)`` usage examples for a checkpoint; each runs as written once ``photo.jpg`` exists."""
    box = "[[30.0, 20.0, 80.0, 160.0]]"
    several = len(config.datasets) > 1
    first = config.dataset_names[0]
    pick = f', dataset="{first}"' if several else ""
    index = ", dataset_index=0" if several else ""
    if weights_format == "transformers":
        return [
            (
                "With transformers alone (its own `VitPose` classes)",
                "\n".join(
                    [
                        "import torch",
                        "from PIL import Image",
                        "from transformers import AutoImageProcessor, VitPoseForPoseEstimation",
                        "",
                        f'processor = AutoImageProcessor.from_pretrained("{model_name}")',
                        f'model = VitPoseForPoseEstimation.from_pretrained("{model_name}").eval()',
                        'image = Image.open("photo.jpg").convert("RGB")',
                        f"boxes = [{box}]  # per image, person boxes (x, y, w, h) from any detector",
                        'inputs = processor(image, boxes=boxes, return_tensors="pt")',
                        "with torch.no_grad():",
                        "    outputs = model(**inputs)",
                        "people = processor.post_process_pose_estimation(outputs, boxes=boxes)[0]",
                        'print(people[0]["keypoints"].shape, people[0]["scores"].shape)',
                    ]
                ),
            ),
            (
                "With vitpose-hf (`pip install vitpose-hf`; converted on load, official decoding)",
                "\n".join(
                    [
                        "import vitpose_hf",
                        "",
                        f'pose = vitpose_hf.pipeline("{model_name}", device="cpu")',
                        f'people = pose("photo.jpg", boxes={box})  # (x, y, w, h) person boxes',
                        'print(people[0]["keypoints"][0])',
                    ]
                ),
            ),
        ]
    return [
        (
            "Pipeline (`pip install vitpose-hf`)",
            "\n".join(
                [
                    "import vitpose_hf",
                    "",
                    f'pose = vitpose_hf.pipeline("{model_name}", device="cpu")',
                    f'people = pose("photo.jpg", boxes={box}{pick})  # (x, y, w, h) boxes from any detector',
                    'print(people[0]["keypoints"][0])  # {"name": ..., "x": ..., "y": ..., "score": ...}',
                ]
            ),
        ),
        (
            "Model and processor with `from_pretrained`",
            "\n".join(
                [
                    "import torch",
                    "from PIL import Image",
                    "from vitpose_hf import ViTPoseForPoseEstimation, ViTPoseImageProcessor",
                    "",
                    f'model = ViTPoseForPoseEstimation.from_pretrained("{model_name}").eval()',
                    f'processor = ViTPoseImageProcessor.from_pretrained("{model_name}")',
                    'image = Image.open("photo.jpg")',
                    f'inputs = processor(image, boxes={box}, box_format="xywh"{pick})',
                    "with torch.no_grad():",
                    f'    outputs = model(inputs["pixel_values"]{index})',
                    "people = processor.post_process_pose_estimation(outputs, crop_metadata=inputs)[0]",
                    'print(people[0]["keypoints"].shape, people[0]["labels"][:3])',
                ]
            ),
        ),
        (
            "Without installing vitpose-hf (only transformers; `trust_remote_code=True` runs the code in this repo)",
            "\n".join(
                [
                    "import torch",
                    "from transformers import AutoImageProcessor, AutoModelForPoseEstimation, pipeline",
                    "",
                    f'pose = pipeline(model="{model_name}", trust_remote_code=True, device="cpu")',
                    f'people = pose("photo.jpg", boxes={box}{pick})',
                    "",
                    f'model = AutoModelForPoseEstimation.from_pretrained("{model_name}", trust_remote_code=True)',
                    f'processor = AutoImageProcessor.from_pretrained("{model_name}", trust_remote_code=True)',
                    f'inputs = processor("photo.jpg", boxes={box}{pick})',
                    "with torch.no_grad():",
                    f'    outputs = model(inputs["pixel_values"]{index})',
                    "people = processor.post_process_pose_estimation(outputs, crop_metadata=inputs)[0]",
                ]
            ),
        ),
    ]


def official_recipe(config: ViTPoseConfig) -> list[str]:
    """The authors' training recipe for this size (their configs), as card lines."""
    plus = config.num_experts > 1 or config.dataset_names != ["coco"]
    size = preset_size_key(config.hidden_size, config.num_hidden_layers)
    preset = PRESET_SIZES[size] if size else None
    decay = f"{preset.decay(plus)}" if preset else "per size"
    drop = f"{preset.drop_path_rate}" if preset else "per size"
    data = "COCO, AI Challenger, MPII, AP-10K, APT-36K and COCO-WholeBody mixed" if plus else "COCO train2017"
    return [
        f"- Data: {data}; MAE-pretrained backbone.",
        f"- AdamW (betas 0.9 / 0.999, weight decay 0.1), base lr {'1e-3' if plus else '5e-4'}, layer-wise lr decay "
        f"{decay}, drop path {drop}, gradient clipping at norm 1.0.",
        "- 210 epochs, lr x0.1 at epochs 170 and 200, 500-iteration linear warm-up; batch 512 (8 GPUs x 64)"
        + (" for the single-dataset models (ViTPose++: 128 per GPU)." if plus else "."),
        "- 256x192 crops (box padded 1.25x to 3:4), random flip, half-body, scale (x0.5-1.5) and rotation (+-40 deg) "
        "augmentation; "
        + (
            "Gaussian targets with sigma 2, UDP warps and targets for COCO and MPII, classic ones for the others."
            if plus
            else "UDP warps and Gaussian targets with sigma 2."
        ),
        "- vitpose-hf reproduces this recipe with `vitpose-hf train` (see `docs/training.md`).",
    ]


def _keypoint_section(config: ViTPoseConfig) -> list[str]:
    lines = ["## Keypoints", ""]
    if len(config.datasets) > 1:
        lines += [
            "One head per dataset; pick it with `dataset_index` (an index or a name) in the model, `dataset=` in the "
            "pipeline.",
            "",
            "| dataset_index | name | keypoints | first keypoints |",
            "|---|---|---|---|",
        ]
        for i, info in enumerate(config.datasets):
            names = info["keypoint_names"]
            shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            lines.append(f"| {i} | `{info['name']}` | {len(names)} | {shown} |")
        lines += [
            "",
            "The full layouts (names, flip pairs, skeleton, OKS sigmas) are in `config.json` (`datasets`).",
            "",
        ]
        return lines
    info = config.datasets[0]
    names = info["keypoint_names"]
    lines += [f"Layout `{info['name']}`, {len(names)} keypoints, in output order:", ""]
    if len(names) <= 32:
        lines += ["| index | keypoint |", "|---|---|"] + [f"| {i} | {n} |" for i, n in enumerate(names)]
    else:
        lines.append(", ".join(f"{i} {n}" for i, n in enumerate(names[:17])) + ", ... (the rest in `config.json`)")
    lines.append("")
    return lines


def _architecture_section(config: ViTPoseConfig, weights_format: str) -> list[str]:
    counts = count_parameters(config)
    height, width = config.image_size
    hm_h, hm_w = config.heatmap_size
    rows = [
        (
            "encoder",
            f"ViT, width {config.hidden_size}, {config.num_hidden_layers} blocks, {config.num_attention_heads} heads, "
            f"patch {config.patch_size} (padding {config.patch_padding})",
        ),
        ("decoder", f"{config.decoder} ({len(config.datasets)} head{'s' if len(config.datasets) > 1 else ''})"),
        ("input", f"{height}x{width} crops (height x width), RGB, ImageNet mean/std"),
        ("output", f"{hm_h}x{hm_w} heatmaps per keypoint"),
        ("parameters", _millions(counts["total"])),
    ]
    if config.num_experts > 1:
        rows.insert(1, ("experts", f"{config.num_experts} (partially shared FFN, expert width {config.part_features})"))
    if counts["active"] != [counts["total"]]:
        rows.append(
            (
                "parameters per crop",
                ", ".join(f"{n} {_millions(a)}" for n, a in zip(config.dataset_names, counts["active"])),
            )
        )
    flops = [flops_per_crop(config, k) for k in range(len(config.datasets))]
    flop_text = (
        _giga(flops[0])
        if len(set(flops)) == 1
        else ", ".join(f"{n} {_giga(f)}" for n, f in zip(config.dataset_names, flops))
    )
    rows.append(("GFLOPs per crop", f"{flop_text} (a multiply-add counts as 2, as `torch.utils.flop_counter`)"))
    rows.append(("weights format", "transformers `vitpose`" if weights_format == "transformers" else "vitpose-hf"))
    lines = ["## Model", "", "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    return lines + ["", "Parameters and FLOPs are computed from `config.json` by vitpose-hf, not copied.", ""]


def _reported_section(reported: Sequence[ReportedFigure]) -> list[str]:
    lines = [
        "## Results reported by the authors",
        "",
        f"Figures published by the ViTPose authors for their weights ([{AUTHORS_URL}]({AUTHORS_URL})); vitpose-hf "
        "has not re-measured them. The converted weights reproduce the authors' forward pass numerically.",
        "",
        "| head | benchmark | metric | value |",
        "|---|---|---|---|",
    ]
    lines += [f"| `{r.dataset}` | {r.benchmark} | {r.metric} | {r.value} |" for r in reported]
    return lines + [""]


def _limitations(config: ViTPoseConfig, weights_format: str) -> list[str]:
    lines = [
        "## Limitations",
        "",
        "- Top-down: it needs a box per subject (a detector's or yours); with no box the pipeline uses the whole "
        "image as one box, which only suits a photo of one subject. Accuracy follows the boxes.",
        f"- Trained at {config.image_size[0]}x{config.image_size[1]}; other crop sizes need "
        "`interpolate_pos_encoding=True` and were not evaluated.",
        "- Keypoint scores are raw heatmap maxima, not calibrated probabilities; nothing is dropped.",
    ]
    if len(config.datasets) > 1:
        lines.append(
            "- Each head is only meaningful with its own `dataset_index`; transformers' own `VitPose` classes keep "
            "the COCO head only, so use vitpose-hf or this repo's remote code for the others."
        )
    if config.decoder == "simple" and preset_size_key(config.hidden_size, config.num_hidden_layers) == "s":
        lines.append(
            "- The authors' ViTPose-S 'simple' config is byte-identical to the classic one; this card follows the "
            "decoder found in the weights."
        )
    if weights_format == "transformers":
        lines.append(
            "- transformers' own processor blurs heatmaps with sigma 0.8 (the authors use sigma 2) and warps with "
            "scipy; vitpose-hf decodes as the authors do."
        )
    return lines + [""]


def _licence_section(license: str, training_data: Sequence[str], authors_weights: bool) -> list[str]:
    why = " (the authors released their weights with their Apache-2.0 repository)" if authors_weights else ""
    lines = ["## Licences", "", f"- Weights: `{license}`{why}."]
    research = []
    for name in training_data:
        terms = DATA_TERMS.get(name)
        if terms is None:
            lines.append(f"- Training data `{name}`: see its own terms.")
            continue
        lines.append(f"- Training data {terms.display_name}: {terms.terms}.")
        if terms.research_only:
            research.append(terms.display_name)
    if research:
        lines.append(
            f"- **{' and '.join(research)} are licensed for research only**: check their terms before any "
            "commercial use of weights trained on them."
        )
    return lines + [""]


# ----------------------------------------------------------------------------------------------------------------
# The card
# ----------------------------------------------------------------------------------------------------------------
def _eval_results(
    metrics: Mapping[str, Mapping[str, float]],
    dataset_ids: Mapping[str, str],
    reported: Sequence[ReportedFigure],
) -> list[EvalResult]:
    results = []
    for name, values in metrics.items():
        source = dataset_ids.get(name)
        for key in ("AP", "AP50", "AP75", "AR", "loss"):
            value = values.get(key)
            if value is None or (key != "loss" and value < 0):
                continue
            results.append(
                EvalResult(
                    task_type="keypoint-detection",
                    task_name="Pose estimation",
                    dataset_type=source if is_hub_id(source) else name,
                    dataset_name=name,
                    dataset_split="validation",
                    metric_type=key,
                    metric_value=round(float(value), 6),
                    metric_name=_METRIC_NAMES[key],
                )
            )
    for figure in reported:
        terms = DATA_TERMS.get(figure.dataset)
        results.append(
            EvalResult(
                task_type="keypoint-detection",
                task_name="Pose estimation",
                dataset_type=terms.card_id if terms else figure.dataset,
                dataset_name=figure.benchmark,
                dataset_split=figure.split,
                metric_type=figure.metric,
                metric_value=figure.value,
                metric_name=f"{_METRIC_NAMES.get(figure.metric, figure.metric)}, reported by the authors",
                source_name=AUTHORS_SOURCE,
                source_url=AUTHORS_URL,
                verified=False,
            )
        )
    return results


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
    reported: Sequence[ReportedFigure] = (),
    weights_format: str = "vitpose_hf",
    recipe: Sequence[str] | None = None,
    training_data: Sequence[str] | None = None,
) -> ModelCard:
    """A filled-in model card (YAML metadata + markdown body).

    Args:
        config: the saved model's config (sizes, heads, keypoint layouts); parameters and FLOPs come from it.
        model_name: name in the model-index and in the usage snippets (the Hub repo id when pushing).
        metrics: per keypoint layout (head) name, our measured validation metrics (``AP``, ``AP50``, ..., ``loss``).
        dataset_ids: per layout name, the dataset it was trained on (Hub id or local path; only Hub ids go into
            the ``datasets`` metadata).
        base_model: the checkpoint training (or conversion) started from (Hub id or path).
        training: hyperparameters shown in the card.
        license: licence of the weights.
        notes: extra lines for the description.
        reported: the authors' published figures for these weights, labelled as theirs in the model-index.
        weights_format: ``"vitpose_hf"`` (remote code, ``custom_code`` tag) or ``"transformers"`` (its ``vitpose``).
        recipe: lines describing how the weights were trained (default: the hyperparameters in ``training``).
        training_data: dataset names the weights were trained on (default: the heads' datasets), for the licences.
    """
    if weights_format not in ("vitpose_hf", "transformers"):
        raise ValueError(f"weights_format must be 'vitpose_hf' or 'transformers', got {weights_format!r}")
    metrics = dict(metrics or {})
    dataset_ids = dict(dataset_ids or {})
    training_data = list(training_data if training_data is not None else config.dataset_names)
    eval_results = _eval_results(metrics, dataset_ids, reported)
    hub_datasets = {v for v in dataset_ids.values() if is_hub_id(v)}
    if not dataset_ids:  # released weights: the training datasets by name
        hub_datasets |= {DATA_TERMS[n].card_id for n in training_data if n in DATA_TERMS}
    tags = ["vitpose", "vitpose-hf", "pose-estimation", "keypoint-detection", "vision"]
    if weights_format == "vitpose_hf":
        tags.append("custom_code")
    data = ModelCardData(
        license=license,
        library_name="transformers",
        pipeline_tag="keypoint-detection",
        tags=tags,
        datasets=sorted(hub_datasets) or None,
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
        f"{size} top-down pose estimator ({config.decoder} decoder) for {height}x{width} person/animal crops. "
        f"Heads: {heads}.",
        "",
    ]
    if base_model and not reported:  # released weights say where they were converted from in their notes
        lines += [f"Initialised from `{base_model}`.", ""]
    lines += [*notes, ""] if notes else []
    lines += _architecture_section(config, weights_format)
    lines += _keypoint_section(config)
    lines += ["## Usage", ""]
    for title, code in usage_snippets(config, model_name, weights_format):
        lines += [f"### {title}", "", "```python", code, "```", ""]
    if weights_format == "vitpose_hf":
        lines += [
            "The pipeline returns one dict per person: `box`, `box_format`, `box_score`, `label`, `dataset` and "
            "`keypoints` (`name`, `x`, `y`, `score` in image pixels); `post_process_pose_estimation` keeps the "
            "structure of transformers' ViTPose (`keypoints`, `scores`, `labels`, `bbox` per person).",
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
    if reported:
        lines += _reported_section(reported)
    if recipe or training:
        lines += ["## Training", "", *(recipe or [])]
        if training:
            lines += ([""] if recipe else []) + ["| hyperparameter | value |", "|---|---|"]
            lines += [f"| {key} | {_fmt(value)} |" for key, value in training.items()]
        lines.append("")
    lines += _limitations(config, weights_format)
    lines += _licence_section(license, training_data, authors_weights=bool(reported))
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    content = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)
    return ModelCard(content)
