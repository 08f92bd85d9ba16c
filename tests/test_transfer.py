"""Issue 15: the minimal decoder, partial fine-tuning (freezing flags), distillation and MAE pre-training.

Tiny models (width 32, 2 layers) and synthetic figures (`vitpose_hf.testing`); every run is a few dozen CPU steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from vitpose_hf import ViTPoseConfig, ViTPoseForPoseEstimation
from vitpose_hf.data.hub_dataset import write_layout
from vitpose_hf.keypoint_metadata import get_dataset_info
from vitpose_hf.testing import SYNTHETIC_FIGURE_LAYOUT, synthetic_keypoint_dataset
from vitpose_hf.training import train as train_module

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=(64, 48), patch_size=8)
TINY_OVERRIDES = "hidden_size=32,num_hidden_layers=2,num_attention_heads=4,patch_size=8,deconv_channels=32"


def reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_training(argv: list[str]) -> int:
    reset_accelerate()
    return train_module.main(argv)


def train_args(output_dir: Path, data: Path, steps: int, *extra: str) -> list[str]:
    return [
        "--model_size",
        "s",
        "--config_overrides",
        TINY_OVERRIDES,
        "--image_size",
        "64",
        "48",
        "--dataset_name",
        str(data),
        "--output_dir",
        str(output_dir),
        "--max_train_steps",
        str(steps),
        "--dataloader_num_workers",
        "0",
        "--logging_steps",
        "1",
        "--per_device_train_batch_size",
        "8",
        "--warmup_steps",
        "0",
        "--no_augmentation",
        "--seed",
        "0",
        *extra,
    ]


def losses(output_dir: Path) -> list[float]:
    log = [json.loads(line) for line in (output_dir / "train_log.jsonl").read_text().splitlines()]
    return [r["loss"] for r in log if "loss" in r]


@pytest.fixture(scope="module")
def figures(tmp_path_factory) -> Path:
    """40 training images of drawn figures (9 keypoints), no validation split."""
    path = tmp_path_factory.mktemp("figures") / "hub"
    datasets.DatasetDict({"train": synthetic_keypoint_dataset(num_images=40, seed=0)}).save_to_disk(str(path))
    write_layout(get_dataset_info(SYNTHETIC_FIGURE_LAYOUT), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# minimal decoder
# ---------------------------------------------------------------------------------------------------------------
def test_minimal_decoder_gives_quarter_resolution_heatmaps():
    """Patch 16 with padding 2: a 256x192 crop gives 16x12 tokens and (B, K, H/4, W/4) heatmaps, as the others."""
    config = ViTPoseConfig(**{**TINY, "patch_size": 16, "image_size": (256, 192)}, decoder="minimal", datasets=["aic"])
    model = ViTPoseForPoseEstimation(config).eval()
    with torch.no_grad():
        heatmaps = model(torch.randn(2, 3, 256, 192)).heatmaps
    assert heatmaps.shape == (2, 14, 64, 48)
    assert tuple(config.heatmap_size) == (64, 48)
    # the head is one linear map per token and nothing else
    head = model.heads[0]
    assert [type(m).__name__ for m in head.modules()] == ["ViTPoseMinimalHead", "Linear"]
    assert head.proj.weight.shape == (14 * 16, 32)


def test_minimal_decoder_layout_is_the_pixel_shuffle_formula():
    """Heatmap pixel (r*i + a, r*j + b) of keypoint k = entry k*r*r + a*r + b of W @ token(i, j) + bias
    (PyTorch's pixel shuffle order), computed here token by token with plain loops."""
    config = ViTPoseConfig(**TINY, decoder="minimal", upsample_factor=3, datasets=["mpii"])
    head = ViTPoseForPoseEstimation(config).heads[0]
    torch.manual_seed(0)
    features = torch.randn(2, 32, 4, 5)
    with torch.no_grad():
        out = head(features)
    r, K = 3, 16
    assert out.shape == (2, K, 12, 15)
    weight, bias = head.proj.weight.detach().numpy(), head.proj.bias.detach().numpy()
    f = features.numpy()
    expected = np.zeros((2, K, 12, 15), dtype=np.float64)
    for n in range(2):
        for i in range(4):
            for j in range(5):
                values = weight.astype(np.float64) @ f[n, :, i, j] + bias
                for k in range(K):
                    for a in range(r):
                        for b in range(r):
                            expected[n, k, r * i + a, r * j + b] = values[k * r * r + a * r + b]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_minimal_decoder_save_load_round_trip_is_exact(tmp_path):
    config = ViTPoseConfig(**TINY, decoder="minimal", datasets=["coco"])
    torch.manual_seed(1)
    model = ViTPoseForPoseEstimation(config).eval()
    model.save_pretrained(tmp_path / "m")
    loaded = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.decoder == "minimal" and loaded.config.upsample_factor == 4
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        assert torch.equal(model(x).heatmaps, loaded(x).heatmaps)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_minimal_decoder_is_refused_by_the_transformers_export(tmp_path):
    from vitpose_hf.cli.convert import export_transformers

    model = ViTPoseForPoseEstimation(ViTPoseConfig(**{**TINY, "patch_size": 16}, decoder="minimal"))
    with pytest.raises(ValueError, match="minimal"):
        export_transformers(model, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_minimal_decoder_trains_with_the_training_script(figures, tmp_path):
    """60 steps of `vitpose-hf train --decoder minimal` (constant lr): the loss falls below that of predicting all
    zeros, pi * sigma^2 / (H * W) per keypoint (the energy of a unit Gaussian of sigma 2 on the 32x24 heatmap), which
    an untrained head is above."""
    out = tmp_path / "minimal"
    extra = ("--decoder", "minimal", "--learning_rate", "3e-3", "--lr_steps", "1000", "--lr_step_unit", "step")
    assert run_training(train_args(out, figures, 60, *extra)) == 0
    values = losses(out)
    zero_prediction = np.pi * 2.0**2 / (32 * 24)
    assert len(values) == 60
    assert values[0] > zero_prediction
    assert np.mean(values[-5:]) < 0.8 * zero_prediction, (values[0], values[-5:], zero_prediction)
    saved = load_file(out / "model.safetensors")
    assert saved["heads.0.proj.weight"].shape == (9 * 16, 32)
    assert ViTPoseForPoseEstimation.from_pretrained(out).config.decoder == "minimal"


# ---------------------------------------------------------------------------------------------------------------
# partial fine-tuning
# ---------------------------------------------------------------------------------------------------------------
def _is_attn(name: str) -> bool:
    return name.startswith("backbone.blocks.") and name.split(".")[3] == "attn"


def _is_ffn(name: str) -> bool:
    return name.startswith("backbone.blocks.") and name.split(".")[3] == "mlp"


def _in_first_block_or_embedding(name: str) -> bool:
    return name.startswith(("backbone.patch_embed.", "backbone.pos_embed", "backbone.blocks.0."))


@pytest.mark.parametrize(
    "flags,is_frozen",
    [
        (["--freeze", "attn"], _is_attn),
        (["--freeze", "ffn"], _is_ffn),
        (["--freeze", "backbone"], lambda n: n.startswith("backbone.")),
        (["--freeze-blocks", "1"], _in_first_block_or_embedding),
        (["--freeze", "attn", "--freeze", "ffn"], lambda n: _is_attn(n) or _is_ffn(n)),
    ],
    ids=["attn", "ffn", "backbone", "first_block", "attn+ffn"],
)
def test_frozen_weights_stay_bit_identical_and_the_others_move(figures, tmp_path, flags, is_frozen):
    """4 optimiser steps (weight decay on) from a saved tiny model: the frozen tensors (chosen by name here) equal
    the start bit for bit, every other parameter changed."""
    config = ViTPoseConfig(**TINY, deconv_channels=32, datasets=[SYNTHETIC_FIGURE_LAYOUT])
    torch.manual_seed(0)
    ViTPoseForPoseEstimation(config).save_pretrained(tmp_path / "start")
    start = load_file(tmp_path / "start" / "model.safetensors")
    out = tmp_path / "run"
    argv = train_args(out, figures, 4, "--learning_rate", "1e-3", *flags)
    argv[: argv.index("--image_size") + 3] = ["--model_name_or_path", str(tmp_path / "start")]
    assert run_training(argv) == 0
    end = load_file(out / "model.safetensors")
    params = [n for n, _ in ViTPoseForPoseEstimation(config).named_parameters()]
    frozen = [n for n in params if is_frozen(n)]
    assert frozen and len(frozen) < len(params)
    for name in params:
        if is_frozen(name):
            assert torch.equal(end[name], start[name]), f"{name} is frozen but changed"
        else:
            assert not torch.equal(end[name], start[name]), f"{name} is trainable but did not move"


def test_freeze_flags_reject_bad_values():
    model = ViTPoseForPoseEstimation(ViTPoseConfig(**TINY))
    with pytest.raises(ValueError, match="freeze-blocks must be in 0..2"):
        train_module.freeze_parameters(model, (), 3)
    with pytest.raises(ValueError, match="unknown --freeze part"):
        train_module.freeze_parameters(model, ("mhsa",), 0)
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(SystemExit):
        train_module.parse_args(["--dataset_name", "x", "--output_dir", "y", "--freeze", "mhsa"])
    args = train_module.parse_args(["--dataset_name", "x", "--output_dir", "y", "--freeze-blocks", "2"])
    assert args.freeze_blocks == 2 and args.freeze == []


# ---------------------------------------------------------------------------------------------------------------
# output distillation
# ---------------------------------------------------------------------------------------------------------------
def run_distill(argv: list[str]) -> int:
    from vitpose_hf.training import distill

    reset_accelerate()
    return distill.main(argv)


def held_out_crops(layout: str | dict = SYNTHETIC_FIGURE_LAYOUT) -> torch.Tensor:
    """16 unseen synthetic images of ``layout`` (seed 7), resized to the 64x48 input and normalised."""
    rows = synthetic_keypoint_dataset(layout, num_images=16, seed=7)
    images = np.stack([np.asarray(r["image"].convert("RGB"), dtype=np.float32) / 255 for r in rows])
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    x = torch.nn.functional.interpolate(x, size=(64, 48), mode="bilinear", align_corners=False)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    return (x - mean[:, None, None]) / std[:, None, None]


def test_output_distillation_brings_the_student_closer_to_the_teacher(figures, tmp_path):
    """A width-32 teacher (60 steps, final layer scaled 3x) teaches a smaller width-16 student for 30 steps.
    Measure: the mean squared difference between student and teacher heatmaps on 16 unseen images. With the
    teacher (distill weight 5, GT weight 1) it is at least 10% lower
    than for the same student, seed and steps without it (distill weight 0)."""
    teacher_dir = tmp_path / "teacher"
    assert run_training(train_args(tmp_path / "trained", figures, 60, "--learning_rate", "2e-3")) == 0
    # a teacher with views of its own (3x sharper peaks than the GT): what the student copies is then visible
    trained = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "trained")
    with torch.no_grad():
        trained.heads[0].final_layer.weight.mul_(3)
        trained.heads[0].final_layer.bias.mul_(3)
    trained.save_pretrained(teacher_dir)
    student = "hidden_size=16,num_hidden_layers=2,num_attention_heads=4,patch_size=8,deconv_channels=16"
    results = {}
    for weight in ("5", "0"):
        out = tmp_path / f"student_{weight}"
        argv = train_args(out, figures, 30, "--learning_rate", "2e-3", "--teacher", str(teacher_dir))
        argv[argv.index(TINY_OVERRIDES)] = student
        assert run_distill([*argv, "--distill_weight", weight, "--gt_weight", "1"]) == 0
        results[weight] = ViTPoseForPoseEstimation.from_pretrained(out).eval()
    teacher = ViTPoseForPoseEstimation.from_pretrained(teacher_dir).eval()
    assert results["5"].config.hidden_size == 16 and teacher.config.hidden_size == 32
    x = held_out_crops()
    with torch.no_grad():
        target = teacher(x).heatmaps
        gap = {w: float((m(x).heatmaps - target).pow(2).mean()) for w, m in results.items()}
    assert gap["5"] < 0.9 * gap["0"], gap  # measured: 0.026 vs 0.031


def test_distill_is_a_cli_command_and_checks_the_teacher(tmp_path):
    from vitpose_hf.cli import COMMANDS
    from vitpose_hf.training import distill

    assert COMMANDS["distill"][0] == "vitpose_hf.training.distill"
    student = ViTPoseForPoseEstimation(ViTPoseConfig(**TINY, datasets=[SYNTHETIC_FIGURE_LAYOUT]))
    other = ViTPoseForPoseEstimation(ViTPoseConfig(**TINY, datasets=["coco"]))
    with pytest.raises(ValueError, match="unknown dataset 'figure'"):
        distill.teacher_head_map(student, other)
    # a ViTPose++ teacher: each student head reads the teacher head of its dataset name
    plus = ViTPoseConfig(**TINY, num_experts=2, part_features=8, datasets=["aic", SYNTHETIC_FIGURE_LAYOUT])
    assert distill.teacher_head_map(student, ViTPoseForPoseEstimation(plus)) == [1]
    other.save_pretrained(tmp_path / "coarse")
    wide = ViTPoseForPoseEstimation(ViTPoseConfig(**{**TINY, "patch_size": 16}, datasets=[SYNTHETIC_FIGURE_LAYOUT]))
    wide.save_pretrained(tmp_path / "wide")
    with pytest.raises(ValueError, match="same resolution"):
        distill.load_teacher(str(tmp_path / "wide"), student, torch.device("cpu"))


# ---------------------------------------------------------------------------------------------------------------
# knowledge-token distillation
# ---------------------------------------------------------------------------------------------------------------
def test_knowledge_token_is_appended_after_the_position_embedding_and_dropped_before_the_last_norm():
    """The encoder with a token equals this hand-written forward: patch tokens + position embedding, the token
    concatenated last, the blocks, the token dropped, the last norm (the paper's token-based distillation)."""
    config = ViTPoseConfig(**TINY, knowledge_token=True)
    torch.manual_seed(0)
    model = ViTPoseForPoseEstimation(config).eval()
    enc = model.backbone
    assert enc.knowledge_token.shape == (1, 1, 32)
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        tokens = enc.patch_embed.proj(x).flatten(2).transpose(1, 2)  # (2, 8*6, 32)
        tokens = tokens + enc.pos_embed[:, 1:] + enc.pos_embed[:, :1]
        tokens = torch.cat([tokens, enc.knowledge_token.expand(2, 1, 32)], dim=1)
        for block in enc.blocks:
            tokens = block(tokens, None)[0]
        expected = enc.last_norm(tokens[:, :48])
        out = enc(x, output_hidden_states=True)
    assert out.last_hidden_state.shape == (2, 48, 32) and out.feature_maps.shape == (2, 32, 8, 6)
    assert out.hidden_states[-1].shape == (2, 49, 32)
    torch.testing.assert_close(out.last_hidden_state, expected, rtol=1e-5, atol=1e-5)


def test_knowledge_token_two_stages(figures, tmp_path, monkeypatch):
    """Stage 1 on a saved tiny teacher: only the token moves (every other tensor, BatchNorm statistics included,
    is bit-identical). Stage 2: the student trains with a bit-identical copy of that token. The saved student
    reloads with identical outputs, and its token changes the output compared with the same weights without it."""
    from vitpose_hf.training import distill

    config = ViTPoseConfig(**TINY, deconv_channels=32, datasets=[SYNTHETIC_FIGURE_LAYOUT])
    torch.manual_seed(0)
    ViTPoseForPoseEstimation(config).save_pretrained(tmp_path / "teacher")
    start = load_file(tmp_path / "teacher" / "model.safetensors")
    drawn = {}
    original = distill.token_only

    def recording(model):
        original(model)
        drawn["token"] = model.backbone.knowledge_token.detach().clone()

    monkeypatch.setattr(distill, "token_only", recording)
    stage1 = tmp_path / "stage1"
    argv = train_args(stage1, figures, 4, "--learning_rate", "1e-2")
    argv[: argv.index("--image_size") + 3] = []  # no student options in stage 1
    assert run_distill([*argv, "--token_stage", "1", "--teacher", str(tmp_path / "teacher")]) == 0
    end = load_file(stage1 / "model.safetensors")
    assert set(end) == set(start) | {"backbone.knowledge_token"}
    for name, tensor in start.items():
        assert torch.equal(end[name], tensor), f"{name} changed in stage 1"
    assert not torch.equal(end["backbone.knowledge_token"], drawn["token"]), "the token did not train"
    assert ViTPoseForPoseEstimation.from_pretrained(stage1).config.knowledge_token is True

    stage2 = tmp_path / "stage2"
    argv = train_args(stage2, figures, 4, "--learning_rate", "1e-3", "--token_stage", "2", "--token_from", str(stage1))
    assert run_distill(argv) == 0
    student_state = load_file(stage2 / "model.safetensors")
    assert torch.equal(student_state["backbone.knowledge_token"], end["backbone.knowledge_token"])
    student = ViTPoseForPoseEstimation.from_pretrained(stage2).eval()
    assert student.config.knowledge_token is True
    assert not torch.equal(
        student_state["backbone.blocks.0.attn.qkv.weight"], start["backbone.blocks.0.attn.qkv.weight"]
    )

    student.save_pretrained(tmp_path / "again")
    again = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "again").eval()
    plain_config = ViTPoseConfig(**{**student.config.to_dict(), "knowledge_token": False})
    plain = ViTPoseForPoseEstimation(plain_config).eval()
    plain.load_state_dict({k: v for k, v in student.state_dict().items() if "knowledge_token" not in k}, strict=True)
    x = held_out_crops()
    with torch.no_grad():
        with_token = student(x).heatmaps
        assert torch.equal(again(x).heatmaps, with_token)
        difference = (plain(x).heatmaps - with_token).abs().max()
    assert difference > 1e-4 * with_token.abs().max(), float(difference)


def test_knowledge_token_options_and_width_are_checked(tmp_path):
    from vitpose_hf.conversion import ours_to_transformers
    from vitpose_hf.training import distill

    model = ViTPoseForPoseEstimation(ViTPoseConfig(**TINY))
    with pytest.raises(ValueError, match="shape \\(1, 1, width\\), got \\(1, 2, 32\\)"):
        model.backbone.add_knowledge_token(torch.zeros(1, 2, 32))
    assert model.backbone.knowledge_token is None and model.config.knowledge_token is False
    with pytest.raises(ValueError, match="knowledge_token_width is set but knowledge_token is False"):
        ViTPoseConfig(**TINY, knowledge_token_width=16)
    with pytest.raises(ValueError, match="already has a knowledge token"):
        distill.student_with_token(torch.zeros(1, 1, 32))(
            ViTPoseForPoseEstimation(ViTPoseConfig(**TINY, knowledge_token=True))
        )
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="has no knowledge token"):
        distill.load_knowledge_token(str(tmp_path / "plain"))
    base = ["--dataset_name", "x", "--output_dir", "y"]
    for extra, message in [
        (["--token_stage", "1"], "give --teacher"),
        (["--token_stage", "1", "--teacher", "t", "--model_size", "s"], "drop the student options"),
        (["--token_stage", "2", "--model_size", "s"], "needs --token-from"),
        (["--model_size", "s", "--token_from", "p"], "is for --token-stage 2"),
        (["--model_size", "s"], "output distillation needs --teacher"),
    ]:
        with pytest.raises(ValueError, match=message):
            distill.run(distill.parse_args([*base, *extra]))
    token_model = ViTPoseForPoseEstimation(ViTPoseConfig(**{**TINY, "patch_size": 16}, knowledge_token=True))
    with pytest.raises(ValueError, match="no knowledge token"):
        ours_to_transformers(token_model.config, token_model.state_dict())


# ---------------------------------------------------------------------------------------------------------------
# knowledge token across widths (a wider teacher's token, projected to the student's width)
# ---------------------------------------------------------------------------------------------------------------
def test_knowledge_token_of_another_width_goes_through_a_linear_projection(tmp_path):
    """A width-16 token on a width-32 encoder: the encoder equals the hand-written forward with W @ token + b
    appended last; the config records the token width, so a save / load round trip is exact."""
    torch.manual_seed(0)
    model = ViTPoseForPoseEstimation(ViTPoseConfig(**TINY, deconv_channels=32)).eval()
    token = torch.randn(1, 1, 16)
    model.backbone.add_knowledge_token(token)
    enc = model.backbone
    assert torch.equal(enc.knowledge_token, token)
    assert enc.knowledge_token_proj.weight.shape == (32, 16) and enc.knowledge_token_proj.bias.shape == (32,)
    assert model.config.knowledge_token is True and model.config.knowledge_token_width == 16
    x = torch.randn(2, 3, 64, 48)
    with torch.no_grad():
        projected = token[0, 0] @ enc.knowledge_token_proj.weight.T + enc.knowledge_token_proj.bias
        tokens = enc.patch_embed.proj(x).flatten(2).transpose(1, 2) + enc.pos_embed[:, 1:] + enc.pos_embed[:, :1]
        tokens = torch.cat([tokens, projected.expand(2, 1, 32)], dim=1)
        for block in enc.blocks:
            tokens = block(tokens, None)[0]
        expected = enc.last_norm(tokens[:, :48])
        torch.testing.assert_close(enc(x).last_hidden_state, expected, rtol=1e-5, atol=1e-5)
        heatmaps = model(x).heatmaps
    model.save_pretrained(tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["knowledge_token_width"] == 16
    loaded = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "m").eval()
    assert loaded.backbone.knowledge_token_proj.weight.shape == (32, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x).heatmaps, heatmaps)
    # a same-width token has no projection and no extra config entry
    same = ViTPoseForPoseEstimation(ViTPoseConfig(**TINY))
    same.backbone.add_knowledge_token(torch.randn(1, 1, 32))
    assert same.backbone.knowledge_token_proj is None and same.config.knowledge_token_width is None
    assert not any("knowledge_token_proj" in k for k in same.state_dict())


def test_knowledge_token_stage_two_from_a_wider_teacher(figures, tmp_path, monkeypatch):
    """Stage 2 with the token of a width-32 teacher (what stage 1 writes: the teacher with a token) and a width-16
    student: the token stays bit-identical, the projection (32 -> 16) and the student's weights train, the saved
    student reloads with identical outputs, and its projected token changes the output compared with the same
    weights without token and projection."""
    from vitpose_hf.training import distill

    teacher_config = ViTPoseConfig(**TINY, deconv_channels=32, datasets=[SYNTHETIC_FIGURE_LAYOUT])
    torch.manual_seed(0)
    teacher = ViTPoseForPoseEstimation(teacher_config)
    teacher.backbone.add_knowledge_token()
    teacher.save_pretrained(tmp_path / "stage1")
    token = teacher.backbone.knowledge_token.detach().clone()

    drawn = {}
    original = distill.student_with_token

    def recording(t):
        prepare = original(t)

        def wrapped(model):
            prepare(model)
            drawn["proj"] = model.backbone.knowledge_token_proj.weight.detach().clone()
            drawn["qkv"] = model.backbone.blocks[0].attn.qkv.weight.detach().clone()

        return wrapped

    monkeypatch.setattr(distill, "student_with_token", recording)
    stage2 = tmp_path / "stage2"
    argv = train_args(stage2, figures, 4, "--learning_rate", "1e-3", "--token_stage", "2")
    argv[argv.index(TINY_OVERRIDES)] = "hidden_size=16,num_hidden_layers=2,num_attention_heads=4,patch_size=8"
    argv += ["--token_from", str(tmp_path / "stage1"), "--teacher", str(tmp_path / "stage1")]
    assert run_distill(argv) == 0
    saved = load_file(stage2 / "model.safetensors")
    assert torch.equal(saved["backbone.knowledge_token"], token)
    assert saved["backbone.knowledge_token_proj.weight"].shape == (16, 32)
    assert not torch.equal(saved["backbone.knowledge_token_proj.weight"], drawn["proj"]), "projection did not train"
    assert not torch.equal(saved["backbone.blocks.0.attn.qkv.weight"], drawn["qkv"]), "student did not train"

    student = ViTPoseForPoseEstimation.from_pretrained(stage2).eval()
    assert student.config.hidden_size == 16 and student.config.knowledge_token_width == 32
    student.save_pretrained(tmp_path / "again")
    again = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "again").eval()
    plain_config = ViTPoseConfig(
        **{**student.config.to_dict(), "knowledge_token": False, "knowledge_token_width": None}
    )
    plain = ViTPoseForPoseEstimation(plain_config).eval()
    plain.load_state_dict({k: v for k, v in student.state_dict().items() if "knowledge_token" not in k}, strict=True)
    x = held_out_crops()
    with torch.no_grad():
        with_token = student(x).heatmaps
        assert torch.equal(again(x).heatmaps, with_token)
        difference = (plain(x).heatmaps - with_token).abs().max()
    assert difference > 1e-4 * with_token.abs().max(), float(difference)


# ---------------------------------------------------------------------------------------------------------------
# ViTPose++ teacher and student (several datasets, experts chosen by the dataset index)
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def limbs(tmp_path_factory) -> Path:
    """A second training set: 40 images of drawn MPII figures (16 keypoints)."""
    path = tmp_path_factory.mktemp("limbs") / "hub"
    datasets.DatasetDict({"train": synthetic_keypoint_dataset("mpii", num_images=40, seed=3)}).save_to_disk(str(path))
    write_layout(get_dataset_info("mpii"), path)
    return path


def test_vitpose_plus_output_and_token_distillation(figures, limbs, tmp_path):
    """A ViTPose++ teacher (width 32, experts and heads for 'figure' and 'mpii', 40 steps, final layers scaled 3x)
    teaches a ViTPose++ student of width 16 on both datasets for 20 steps. Measure, per dataset: the mean squared
    difference between student and teacher heatmaps on 16 unseen images of that dataset, each model run with that
    dataset's index. With the teacher (distill weight 5, GT weight 1) it is at least 20% lower than for the same
    student, seed and steps without it (distill weight 0) on 'figure', and lower on 'mpii'. Then the knowledge
    token: stage 1 on that teacher and stage 2 into a width-16 ViTPose++ student (token projected 32 -> 16, with
    output distillation) keep the token bit-identical, and the saved student's dataset-indexed outputs reload
    identically."""
    two = ["--dataset_name", str(limbs)]
    assert run_training([*train_args(tmp_path / "trained", figures, 40, "--learning_rate", "2e-3"), *two]) == 0
    trained = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "trained")
    assert trained.config.num_experts == 2 and trained.config.dataset_names == ["figure", "mpii"]
    with torch.no_grad():
        for head in trained.heads:
            head.final_layer.weight.mul_(3)
            head.final_layer.bias.mul_(3)
    teacher_dir = tmp_path / "teacher"
    trained.save_pretrained(teacher_dir)
    student = "hidden_size=16,num_hidden_layers=2,num_attention_heads=4,patch_size=8,deconv_channels=16"
    results = {}
    for weight in ("5", "0"):
        out = tmp_path / f"student_{weight}"
        argv = train_args(out, figures, 20, "--learning_rate", "2e-3", "--teacher", str(teacher_dir), *two)
        argv[argv.index(TINY_OVERRIDES)] = student
        assert run_distill([*argv, "--distill_weight", weight, "--gt_weight", "1"]) == 0
        results[weight] = ViTPoseForPoseEstimation.from_pretrained(out).eval()
    teacher = ViTPoseForPoseEstimation.from_pretrained(teacher_dir).eval()
    assert results["5"].config.num_experts == 2 and results["5"].config.hidden_size == 16
    gaps = {}
    with torch.no_grad():
        for name, layout in (("figure", SYNTHETIC_FIGURE_LAYOUT), ("mpii", "mpii")):
            x = held_out_crops(layout)
            target = teacher(x, dataset_index=name).heatmaps
            gaps[name] = {
                w: float((m(x, dataset_index=name).heatmaps - target).pow(2).mean()) for w, m in results.items()
            }
    # measured: figure 0.0097 vs 0.0151, mpii 0.0154 vs 0.0164 (16 keypoints learn slower in 20 steps)
    assert gaps["figure"]["5"] < 0.8 * gaps["figure"]["0"], gaps
    assert gaps["mpii"]["5"] < gaps["mpii"]["0"], gaps

    stage1 = tmp_path / "stage1"
    argv = train_args(stage1, figures, 3, "--learning_rate", "1e-2", *two)
    argv[: argv.index("--image_size") + 3] = []
    assert run_distill([*argv, "--token_stage", "1", "--teacher", str(teacher_dir)]) == 0
    token = load_file(stage1 / "model.safetensors")["backbone.knowledge_token"]
    assert token.shape == (1, 1, 32)
    stage2 = tmp_path / "stage2"
    argv = train_args(stage2, figures, 3, "--token_stage", "2", "--token_from", str(stage1), *two)
    argv[argv.index(TINY_OVERRIDES)] = student
    assert run_distill([*argv, "--teacher", str(teacher_dir)]) == 0
    saved = load_file(stage2 / "model.safetensors")
    assert torch.equal(saved["backbone.knowledge_token"], token)
    distilled = ViTPoseForPoseEstimation.from_pretrained(stage2).eval()
    assert distilled.config.num_experts == 2 and distilled.config.knowledge_token_width == 32
    distilled.save_pretrained(tmp_path / "again")
    again = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "again").eval()
    x = held_out_crops("mpii")
    with torch.no_grad():
        assert torch.equal(again(x, dataset_index="mpii").heatmaps, distilled(x, dataset_index="mpii").heatmaps)
