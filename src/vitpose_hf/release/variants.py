"""The released checkpoints: one per size and variant, their sources, the authors' figures and their cards.

Variants, for each size S/B/L/H:

- ``vitpose-{size}`` and ``vitpose-{size}-simple``: ViTPose trained on COCO, classic and simple decoders;
- ``vitpose-plus-{size}``: ViTPoseS++ with its six experts and heads (COCO, AIC, MPII, AP-10K, APT-36K, WholeBody);
- ``vitpose-plus-{size}-{dataset}``: the dense per-dataset models (``single_dataset``: the expert merged, one head);
- ``...-transformers``: for the COCO-only models, a copy in transformers' own ``vitpose`` format (plain
  transformers, optimum and transformers.js read it).

The cards under ``model_cards/`` are written by :func:`write_model_cards` from the presets; the release tool writes
the same card (from the converted model's config, which must match the preset) into each folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import ModelCard

from vitpose_hf.configuration_vitpose_hf import PRESET_SIZES, ViTPoseConfig
from vitpose_hf.keypoint_metadata import VITPOSE_PLUS_DATASETS
from vitpose_hf.modeling_vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.training.model_card import ReportedFigure, build_model_card, official_recipe

__all__ = [
    "DEFAULT_OWNER",
    "VARIANTS",
    "Release",
    "list_releases",
    "release_card",
    "release_config",
    "reported_figures",
    "write_model_cards",
]

DEFAULT_OWNER = "vitpose-hf"  # the Hub organisation of the committed cards; `--owner` changes it
VARIANTS = ("classic", "simple", "plus", "plus-dense")
TRANSFORMERS_SUFFIX = "-transformers"
# transformers-format checkpoints the authors' weights were already converted to (usyd-community, HF docs)
TRANSFORMERS_SOURCES = {
    "vitpose-b": "usyd-community/vitpose-base",
    "vitpose-b-simple": "usyd-community/vitpose-base-simple",
}


@dataclass(frozen=True)
class Release:
    """One released checkpoint.

    ``source`` names the model it is cut from (a preset name: ``"vitpose-b"``, ``"vitpose-plus-b"``, ...);
    ``dataset`` is set for a dense per-dataset model; ``weights_format`` is ``"vitpose_hf"`` or ``"transformers"``.
    """

    name: str
    source: str
    dataset: str | None = None
    weights_format: str = "vitpose_hf"

    @property
    def coco_only(self) -> bool:
        return self.dataset == "coco" or "-plus-" not in f"-{self.source}-"

    @property
    def plus(self) -> bool:
        return self.source.startswith("vitpose-plus-")

    def repo_id(self, owner: str = DEFAULT_OWNER) -> str:
        return f"{owner}/{self.name}"


def list_releases(
    sizes: tuple[str, ...] | list[str] = tuple(PRESET_SIZES),
    variants: tuple[str, ...] | list[str] = VARIANTS,
    transformers_copies: bool = True,
) -> list[Release]:
    """The releases of these sizes (``"s"``, ``"b"``, ...) and variants (:data:`VARIANTS`), in a stable order."""
    for size in sizes:
        if size not in PRESET_SIZES:
            raise ValueError(f"unknown size {size!r}; choose from {list(PRESET_SIZES)}")
    for variant in variants:
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {list(VARIANTS)}")
    out: list[Release] = []
    for size in sizes:
        bases: list[Release] = []
        if "classic" in variants:
            bases.append(Release(f"vitpose-{size}", f"vitpose-{size}"))
        if "simple" in variants:
            bases.append(Release(f"vitpose-{size}-simple", f"vitpose-{size}-simple"))
        if "plus" in variants:
            bases.append(Release(f"vitpose-plus-{size}", f"vitpose-plus-{size}"))
        if "plus-dense" in variants:
            bases += [
                Release(f"vitpose-plus-{size}-{name}", f"vitpose-plus-{size}", dataset=name)
                for name in VITPOSE_PLUS_DATASETS
            ]
        for release in bases:
            out.append(release)
            if transformers_copies and release.coco_only:
                out.append(Release(release.name + TRANSFORMERS_SUFFIX, release.source, release.dataset, "transformers"))
    return out


# ----------------------------------------------------------------------------------------------------------------
# The authors' figures (ViTPose README tables; official_vitpose.md section 7)
# ----------------------------------------------------------------------------------------------------------------
_COCO_VAL = "COCO val2017 (person detections with 56 AP, flip test)"
_SINGLE = {  # (size, decoder) -> (AP, AR)
    ("s", "classic"): (73.8, 79.2),
    ("s", "simple"): (73.5, 78.9),
    ("b", "classic"): (75.8, 81.1),
    ("b", "simple"): (75.5, 80.9),
    ("l", "classic"): (78.3, 83.5),
    ("l", "simple"): (78.2, 83.4),
    ("h", "classic"): (79.1, 84.1),
    ("h", "simple"): (78.9, 84.0),
}
_PLUS = {  # size -> dataset -> [(metric, value, benchmark, split)]
    size: {
        "coco": [("AP", coco[0], _COCO_VAL, "validation"), ("AR", coco[1], _COCO_VAL, "validation")],
        "aic": [
            ("AP", aic[0], "AI Challenger (ground-truth boxes)", "validation"),
            ("AR", aic[1], "AI Challenger (ground-truth boxes)", "validation"),
        ],
        "mpii": [("PCKh", mpii, "MPII val (ground-truth boxes)", "validation")],
        "ap10k": [("AP", ap10k, "AP-10K test (ground-truth boxes)", "test")],
        "apt36k": [("AP", apt36k, "APT-36K val (ground-truth boxes)", "validation")],
        "wholebody": [("AP", wholebody, "COCO-WholeBody val (person detections with 56 AP)", "validation")],
    }
    for size, coco, aic, mpii, ap10k, apt36k, wholebody in (
        ("s", (75.8, 82.6), (29.7, 34.3), 92.7, 71.4, 74.2, 54.4),
        ("b", (77.0, 82.6), (31.8, 36.3), 92.8, 74.5, 75.9, 57.4),
        ("l", (78.6, 84.1), (34.3, 38.9), 94.0, 80.4, 80.8, 60.6),
        ("h", (79.4, 84.8), (34.8, 39.1), 94.2, 82.4, 82.3, 61.2),
    )
}


def _size_of(source: str) -> str:
    return source.removeprefix("vitpose-plus-").removeprefix("vitpose-").split("-")[0]


def reported_figures(release: Release) -> list[ReportedFigure]:
    """The authors' published figures for the weights of ``release`` (the six-head model: every head's)."""
    size = _size_of(release.source)
    if not release.plus:
        decoder = "simple" if release.source.endswith("-simple") else "classic"
        ap, ar = _SINGLE[(size, decoder)]
        return [
            ReportedFigure("coco", "AP", ap, _COCO_VAL, "validation"),
            ReportedFigure("coco", "AR", ar, _COCO_VAL, "validation"),
        ]
    names = [release.dataset] if release.dataset else list(VITPOSE_PLUS_DATASETS)
    return [ReportedFigure(name, *row) for name in names for row in _PLUS[size][name]]


# ----------------------------------------------------------------------------------------------------------------
# Configs and cards
# ----------------------------------------------------------------------------------------------------------------
def release_config(release: Release, source_model: ViTPoseForPoseEstimation | None = None) -> ViTPoseConfig:
    """The config a release has when its source has the preset's shape (dense models: ``single_dataset``'s).

    ``source_model``: the preset's model on the meta device, when the caller already built it.
    """
    config = ViTPoseConfig.from_preset(release.source)
    if release.dataset is None:
        return config
    with torch.device("meta"):  # shapes only: no memory, no weights
        model = source_model if source_model is not None else ViTPoseForPoseEstimation(config)
        return model.single_dataset(release.dataset).config


def release_card(
    release: Release, config: ViTPoseConfig, owner: str = DEFAULT_OWNER, base_model: str | None = None
) -> ModelCard:
    """The model card of ``release`` built from ``config`` (the converted model's, or :func:`release_config`)."""
    what = "the authors' ViTPose++ weights" if release.plus else "the authors' ViTPose weights"
    via = f", through transformers' `{base_model}`" if base_model else ""
    notes = [f"Converted by vitpose-hf from {what} (github.com/ViTAE-Transformer/ViTPose){via}."]
    if release.dataset:
        notes.append(
            f"Dense `{release.dataset}` model: the ViTPose++ expert of that dataset merged into the shared FFN and its "
            "head alone (the authors' `tools/model_split.py`), numerically equal to the six-head model with "
            f'`dataset_index="{release.dataset}"`.'
        )
    if release.weights_format == "transformers":
        notes.append("Stored in transformers' own `vitpose` format: no remote code, one head.")
    else:
        notes.append(
            "Stored in the vitpose-hf format; the model, processor and pipeline code travel with the weights "
            "(`trust_remote_code=True`), so only transformers is needed."
        )
    return build_model_card(
        config,
        model_name=release.repo_id(owner),
        base_model=base_model,
        notes=notes,
        reported=reported_figures(release),
        weights_format=release.weights_format,
        recipe=official_recipe(ViTPoseConfig.from_preset(release.source)),
        training_data=list(VITPOSE_PLUS_DATASETS) if release.plus else ["coco"],
    )


def _base_model(release: Release) -> str | None:
    return TRANSFORMERS_SOURCES.get(release.source)


def write_model_cards(directory: str | os.PathLike, owner: str = DEFAULT_OWNER) -> list[Path]:
    """Write the card of every release to ``directory/<name>.md`` (the committed ``model_cards/``)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    sources: dict[str, ViTPoseForPoseEstimation] = {}  # one meta model per source, cut into its dense models
    for release in list_releases():
        path = out / f"{release.name}.md"
        if release.dataset is not None and release.source not in sources:
            with torch.device("meta"):
                sources[release.source] = ViTPoseForPoseEstimation(ViTPoseConfig.from_preset(release.source))
        config = release_config(release, sources.get(release.source))
        card = release_card(release, config, owner, base_model=_base_model(release))
        path.write_text(str(card), encoding="utf-8")
        written.append(path)
    return written
