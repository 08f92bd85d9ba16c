"""Checkpoint compatibility: transformers' VitPose, official mmpose .pth files, and export back to transformers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch
from transformers import VitPoseBackboneConfig, VitPoseConfig, VitPoseForPoseEstimation

from vitpose_hf import ViTPoseConfig, ViTPoseForPoseEstimation
from vitpose_hf.cli.convert import convert, convert_official
from vitpose_hf.conversion import convert_official_state_dict, infer_official_config

from helpers import PLUS_K, official_forward, official_state_dict, randomize_batchnorm
from official_names import AIC_NAMES, AP10K_NAMES

X = torch.randn(3, 3, 64, 48, generator=torch.Generator().manual_seed(1))


def build_transformers(tmp_path, simple: bool, experts: int, eps: float | None = None, names=None, edges=None):
    kwargs = {} if eps is None else {"layer_norm_eps": eps}
    backbone = VitPoseBackboneConfig(
        image_size=(64, 48),
        patch_size=(8, 8),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_experts=experts,
        part_features=8 if experts > 1 else 0,
        out_indices=[2],
        **kwargs,
    )
    labels = (
        {"num_labels": 17}
        if names is None
        else {"id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}
    )
    if edges is not None:
        labels["edges"] = edges
    torch.manual_seed(0)
    config = VitPoseConfig(backbone_config=backbone, use_simple_decoder=simple, **labels)
    model = VitPoseForPoseEstimation(config).eval()
    with torch.no_grad():
        randomize_batchnorm(model)
        for p in model.parameters():  # larger weights than the init, so that differences show
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / f"hf_{simple}_{experts}_{len(names or ())}"
    model.save_pretrained(path)
    return model, path


@pytest.mark.parametrize(
    "simple,experts", [(True, 1), (False, 1), (False, 6)], ids=["dense-simple", "dense-classic", "moe-classic"]
)
def test_transformers_parity(tmp_path, simple, experts):
    reference, path = build_transformers(tmp_path, simple, experts)
    ours = ViTPoseForPoseEstimation.from_pretrained(path).eval()
    assert ours.config.layer_norm_eps == reference.config.backbone_config.layer_norm_eps
    assert ours.config.decoder == ("simple" if simple else "classic")
    with torch.no_grad():
        for k in range(experts):
            ref_kwargs = {"dataset_index": torch.full((3,), k)} if experts > 1 else {}
            expected = reference(X, **ref_kwargs).heatmaps
            got = ours(X, expert_index=k).heatmaps
            assert got.shape == expected.shape == (3, 17, 32, 24)
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=0, msg=f"expert {k}")
        # the default for a transformers ViTPose++ checkpoint is the COCO expert, the one its COCO head matches
        torch.testing.assert_close(
            ours(X).heatmaps,
            reference(X, **({"dataset_index": torch.zeros(3, dtype=torch.long)} if experts > 1 else {})).heatmaps,
            atol=1e-5,
            rtol=0,
        )


def test_transformers_eps_is_read_from_config(tmp_path):
    reference, path = build_transformers(tmp_path, True, 1, eps=1e-6)
    ours = ViTPoseForPoseEstimation.from_pretrained(path).eval()
    assert ours.config.layer_norm_eps == 1e-6
    with torch.no_grad():
        torch.testing.assert_close(ours(X).heatmaps, reference(X).heatmaps, atol=1e-5, rtol=0)


def test_export_to_transformers_round_trip(tmp_path):
    torch.manual_seed(0)
    ours = ViTPoseForPoseEstimation(
        ViTPoseConfig.from_preset(
            "vitpose-plus-b",
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=(64, 48),
            patch_size=8,
            part_features=8,
        )
    ).eval()
    randomize_batchnorm(ours)
    ours.save_pretrained(tmp_path / "ours")
    convert(str(tmp_path / "ours"), str(tmp_path / "hf"), to="transformers", dataset="ap10k")
    reference = VitPoseForPoseEstimation.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reference(X, dataset_index=torch.full((3,), 3)).heatmaps,
            ours(X, dataset_index="ap10k").heatmaps,
            atol=1e-5,
            rtol=0,
        )


OFFICIAL_CASES = {
    "dense-classic": {"head_k": (17,)},
    "dense-simple": {"head_k": (17,), "classic": False},
    "v1-multi-dataset": {"head_k": (17, 14, 16), "cls_token": True},
    "vitpose-plus": {"head_k": tuple(PLUS_K), "experts": 6, "cls_token": True},
}


@pytest.mark.parametrize("case", list(OFFICIAL_CASES))
@pytest.mark.parametrize("wrapped", [True, False], ids=["mmcv-dict", "bare"])
def test_official_checkpoint_converts_and_matches_official_forward(tmp_path, case, wrapped):
    sd = official_state_dict(**OFFICIAL_CASES[case])
    path = tmp_path / "official.pth"
    torch.save({"state_dict": sd, "meta": {"epoch": 210}} if wrapped else sd, path)
    model = convert_official(path, num_attention_heads=4)
    heads = OFFICIAL_CASES[case]["head_k"]
    assert model.config.num_keypoints == list(heads)
    with torch.no_grad():
        for d in range(len(heads)):
            expected = official_forward(sd, X, dataset=d)
            got = model(X, dataset_index=d).heatmaps
            torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5, msg=f"{case} head {d}")


def test_convert_cli_writes_loadable_folder(tmp_path):
    sd = official_state_dict(**OFFICIAL_CASES["vitpose-plus"])
    torch.save({"state_dict": sd}, tmp_path / "plus.pth")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "vitpose_hf.cli.convert",
            str(tmp_path / "plus.pth"),
            str(tmp_path / "out"),
            "--num-attention-heads",
            "4",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "6 expert(s)" in out.stdout
    model = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "out").eval()
    assert model.config.dataset_names == ["coco", "aic", "mpii", "ap10k", "apt36k", "wholebody"]
    with torch.no_grad():
        torch.testing.assert_close(
            model(X, dataset_index=5).heatmaps, official_forward(sd, X, dataset=5), atol=1e-5, rtol=1e-5
        )
    # one dataset, dense: the expert merged into fc2
    convert(str(tmp_path / "out"), str(tmp_path / "wb"), dataset="wholebody")
    dense = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "wb").eval()
    assert dense.config.num_experts == 1 and dense.config.dataset_names == ["wholebody"]
    with torch.no_grad():
        torch.testing.assert_close(dense(X).heatmaps, official_forward(sd, X, dataset=5), atol=1e-5, rtol=1e-5)


def test_model_split_output_converts(tmp_path):
    """tools/model_split.py keeps a dense fc2 (shared + expert rows) next to leftover experts and heads."""
    sd = official_state_dict(**OFFICIAL_CASES["vitpose-plus"])
    split = dict(sd)
    for i in range(2):
        p = f"backbone.blocks.{i}.mlp."
        for t in ("weight", "bias"):
            split[p + f"fc2.{t}"] = torch.cat([sd[p + f"fc2.{t}"], sd[p + f"experts.0.{t}"]])
    torch.save({"state_dict": split}, tmp_path / "coco.pth")
    model = convert_official(tmp_path / "coco.pth", num_attention_heads=4)
    assert model.config.num_experts == 1 and model.config.dataset_names == ["coco"]
    with torch.no_grad():
        torch.testing.assert_close(model(X).heatmaps, official_forward(sd, X, dataset=0), atol=1e-5, rtol=1e-5)


def test_leftover_and_missing_keys_are_named(tmp_path):
    sd = official_state_dict()
    sd["backbone.mystery.weight"] = torch.zeros(3)
    with pytest.raises(ValueError, match="backbone.mystery.weight"):
        torch.save(sd, tmp_path / "a.pth")
        convert_official(tmp_path / "a.pth", num_attention_heads=4)
    sd = official_state_dict()
    sd["something_else"] = torch.zeros(1)
    torch.save(sd, tmp_path / "b.pth")
    with pytest.raises(ValueError, match="something_else"):
        convert_official(tmp_path / "b.pth", num_attention_heads=4)
    sd = official_state_dict()
    del sd["backbone.blocks.1.attn.proj.bias"]
    torch.save(sd, tmp_path / "c.pth")
    with pytest.raises(ValueError, match="blocks.1.attn.proj.bias"):
        convert_official(tmp_path / "c.pth", num_attention_heads=4)


def test_missing_key_in_our_checkpoint_is_an_error(tmp_path):
    from safetensors.torch import load_file, save_file

    model = ViTPoseForPoseEstimation(
        ViTPoseConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=(64, 48), patch_size=8)
    )
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["backbone.last_norm.bias"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="backbone.last_norm.bias"):
        ViTPoseForPoseEstimation.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "name,width,depth,heads,experts,part,decoder",
    [
        ("vitpose-s", 384, 12, 12, 1, 0, "classic"),
        ("vitpose-b-simple", 768, 12, 12, 1, 0, "simple"),
        ("vitpose-l", 1024, 24, 16, 1, 0, "classic"),
        ("vitpose-h-simple", 1280, 32, 16, 1, 0, "simple"),
        ("vitpose-plus-s", 384, 12, 12, 6, 96, "classic"),
        ("vitpose-plus-h", 1280, 32, 16, 6, 320, "classic"),
    ],
)
def test_architecture_is_read_from_tensor_shapes(name, width, depth, heads, experts, part, decoder):
    """Official-size shapes (on the meta device, so nothing is allocated) give back the paper's configurations."""
    C, M = width, 4 * width
    shapes = {"backbone.pos_embed": (1, 193, C), "backbone.patch_embed.proj.weight": (C, 3, 16, 16)}
    for i in range(depth):
        p = f"backbone.blocks.{i}."
        shapes.update(
            {
                p + "attn.qkv.weight": (3 * C, C),
                p + "attn.qkv.bias": (3 * C,),
                p + "mlp.fc1.weight": (M, C),
                p + "mlp.fc2.weight": (C - part, M),
            }
        )
        shapes.update({p + f"mlp.experts.{e}.weight": (part, M) for e in range(experts if experts > 1 else 0)})
    ks = PLUS_K if experts > 1 else [17]
    for h, k in enumerate(ks):
        prefix = "keypoint_head." if h == 0 else f"associate_keypoint_heads.{h - 1}."
        if decoder == "classic":
            shapes[prefix + "deconv_layers.0.weight"] = (C, 256, 4, 4)
            shapes[prefix + "final_layer.weight"] = (k, 256, 1, 1)
        else:
            shapes[prefix + "final_layer.weight"] = (k, C, 3, 3)
    sd = convert_official_state_dict({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    config = ViTPoseConfig(**infer_official_config(sd))
    preset = ViTPoseConfig.from_preset(name)
    for field in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_experts",
        "part_features",
        "decoder",
        "drop_path_rate",
        "image_size",
    ):
        assert getattr(config, field) == getattr(preset, field), field
    assert config.dataset_names == preset.dataset_names


# official ViTPose-S (configs/body/.../coco/ViTPose_small_coco_256x192.py since 2023-01): embed_dim, depth, heads,
# drop path; the classic decoder
VITPOSE_S = {
    "hidden_size": 384,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "drop_path_rate": 0.1,
    "decoder": "classic",
}


@pytest.fixture(scope="module")
def small_vitpose_s(tmp_path_factory):
    """A ViTPose-S-shaped official .pth kept small: width 384, depth 12, but a 96-wide MLP and a 4x3 token grid
    (neither is part of a preset), so a 64x48 input runs through it quickly."""
    sd = official_state_dict(hidden=384, depth=12, patch=16, grid=(4, 3))
    g = torch.Generator().manual_seed(1)
    for i in range(12):
        p = f"backbone.blocks.{i}.mlp."
        sd[p + "fc1.weight"] = torch.randn(96, 384, generator=g) * 0.1
        sd[p + "fc1.bias"] = torch.randn(96, generator=g) * 0.05
        sd[p + "fc2.weight"] = torch.randn(384, 96, generator=g) * 0.1
    path = tmp_path_factory.mktemp("small_s") / "vitpose_s.pth"
    torch.save({"state_dict": sd}, path)
    return path, sd


def heatmaps_in_float64(model: ViTPoseForPoseEstimation, sd: dict, num_heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ours and the official forward in float64: in float32 the rounding through 12 blocks of width 384 exceeds 1e-4."""
    sd64 = {k: v.double() if v.is_floating_point() else v for k, v in sd.items()}
    with torch.no_grad():
        return model.double()(X.double()).heatmaps, official_forward(sd64, X.double(), num_heads=num_heads)


def test_preset_overrides_inference(small_vitpose_s):
    path, sd = small_vitpose_s
    # a preset that fits: its architecture is the one built, and the weights run as the official forward
    model = convert_official(path, preset="vitpose-s")
    for field, value in VITPOSE_S.items():
        assert getattr(model.config, field) == value, field
    torch.testing.assert_close(*heatmaps_in_float64(model, sd, num_heads=12), atol=1e-9, rtol=1e-9)
    # the preset wins over what the tensors say: a simple-decoder or ViTPose++ preset on these classic dense
    # weights builds that architecture, which then refuses the tensors that do not fit it (nothing is ignored)
    with pytest.raises((ValueError, RuntimeError), match=r"heads\.0\.final_layer\.weight"):
        convert_official(path, preset="vitpose-s-simple")
    with pytest.raises((ValueError, RuntimeError), match=r"backbone\.blocks\.0\.mlp\.fc2\.weight"):
        convert_official(path, preset="vitpose-plus-s")
    with pytest.raises(ValueError, match="unknown preset"):
        convert_official(path, preset="vitpose-xl")
    # explicit arguments win over the preset: 6 heads of 64 give other attention than 12 of 32
    six = convert_official(path, preset="vitpose-s", num_attention_heads=6)
    assert six.config.num_attention_heads == 6 and six.config.hidden_size == 384
    got, expected = heatmaps_in_float64(six, sd, num_heads=6)
    torch.testing.assert_close(got, expected, atol=1e-9, rtol=1e-9)
    assert not torch.allclose(got, heatmaps_in_float64(model, sd, num_heads=12)[1], atol=1e-3)


def test_vitpose_hf_convert_command(tmp_path, capsys):
    from vitpose_hf.cli import main

    sd = official_state_dict(**OFFICIAL_CASES["v1-multi-dataset"])
    torch.save({"state_dict": sd}, tmp_path / "multi.pth")
    assert main(["convert", str(tmp_path / "multi.pth"), str(tmp_path / "out"), "--num-attention-heads", "4"]) == 0
    assert "datasets ['coco', 'aic', 'mpii']" in capsys.readouterr().out
    model = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(X, dataset_index="mpii").heatmaps, official_forward(sd, X, dataset=2), atol=1e-5, rtol=1e-5
        )


def test_convert_detects_a_transformers_folder(tmp_path):
    reference, path = build_transformers(tmp_path, False, 6)
    assert "transformers vitpose checkpoint" in convert(str(path), str(tmp_path / "ours"))
    ours = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "ours").eval()
    assert ours.config.model_type == "vitpose_hf" and ours.config.num_experts == 6
    with torch.no_grad():
        torch.testing.assert_close(
            ours(X, expert_index=2).heatmaps,
            reference(X, dataset_index=torch.full((3,), 2)).heatmaps,
            atol=1e-5,
            rtol=0,
        )


def test_convert_command_preset_flag(small_vitpose_s, tmp_path, capsys):
    import json

    from vitpose_hf.cli import main

    path, sd = small_vitpose_s
    assert main(["convert", str(path), str(tmp_path / "s"), "--preset", "vitpose-s"]) == 0
    assert "width 384, depth 12" in capsys.readouterr().out
    written = json.loads((tmp_path / "s" / "config.json").read_text())
    for field, value in VITPOSE_S.items():
        assert written[field] == value, field
    model = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "s").eval()
    torch.testing.assert_close(*heatmaps_in_float64(model, sd, num_heads=12), atol=1e-9, rtol=1e-9)
    # the flag reaches the conversion: a preset that contradicts the tensors stops it, and writes nothing
    assert main(["convert", str(path), str(tmp_path / "simple"), "--preset", "vitpose-s-simple"]) == 2
    assert "heads.0.final_layer.weight" in capsys.readouterr().err  # one line, not a traceback
    assert not (tmp_path / "simple").exists()
    # --num-attention-heads beats --preset
    argv = ["convert", str(path), str(tmp_path / "six"), "--preset", "vitpose-s", "--num-attention-heads", "6"]
    assert main(argv) == 0
    assert json.loads((tmp_path / "six" / "config.json").read_text())["num_attention_heads"] == 6


def test_strict_false_only_warns_naming_the_keys(tmp_path, caplog):
    import logging

    from safetensors.torch import load_file, save_file

    config = ViTPoseConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=(64, 48), patch_size=8
    )
    saved = ViTPoseForPoseEstimation(config)
    with torch.no_grad():
        saved.backbone.last_norm.weight.normal_()
    saved.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["backbone.last_norm.bias"]
    weights["heads.0.spare.weight"] = torch.zeros(3)
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"backbone\.last_norm\.bias") as info:
        ViTPoseForPoseEstimation.from_pretrained(tmp_path)
    assert "heads.0.spare.weight" in str(info.value)
    # transformers reports loading problems on its own logger, which does not propagate to the root logger
    library_logger = logging.getLogger("transformers")
    library_logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="transformers"):
            model = ViTPoseForPoseEstimation.from_pretrained(tmp_path, strict=False)
    finally:
        library_logger.removeHandler(caplog.handler)
    warned = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)
    assert "backbone.last_norm.bias" in warned and "heads.0.spare.weight" in warned
    # the weights that are there are loaded; the missing one is freshly initialised
    torch.testing.assert_close(model.backbone.last_norm.weight, saved.backbone.last_norm.weight, rtol=0, atol=0)
    torch.testing.assert_close(model.heads[0].final_layer.weight, saved.heads[0].final_layer.weight, rtol=0, atol=0)
    assert model.backbone.last_norm.bias.shape == (32,) and torch.isfinite(model.backbone.last_norm.bias).all()


# ---- keypoint layout of transformers checkpoints, from id2label ----------------------------------------------------

# id2label of the released transformers ViTPose checkpoints (convert_vitpose_to_hf.py)
HF_COCO_NAMES = [
    "Nose",
    "L_Eye",
    "R_Eye",
    "L_Ear",
    "R_Ear",
    "L_Shoulder",
    "R_Shoulder",
    "L_Elbow",
    "R_Elbow",
    "L_Wrist",
    "R_Wrist",
    "L_Hip",
    "R_Hip",
    "L_Knee",
    "R_Knee",
    "L_Ankle",
    "R_Ankle",
]


def _other_side(name: str) -> str:
    """`l_eye` -> `r_eye`, `left shoulder` -> `right shoulder`; other names unchanged."""
    side = {"l": "r", "r": "l", "left": "right", "right": "left"}
    return re.sub(r"^(l|r|left|right)(?=[_ ])", lambda m: side[m.group(1)], name)


def _load_with_log(path, caplog):
    caplog.clear()
    with caplog.at_level("WARNING", logger="vitpose_hf.conversion"):
        model = ViTPoseForPoseEstimation.from_pretrained(path).eval()
    return model, [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize(
    "names,expected",
    [
        (HF_COCO_NAMES, "coco"),
        (AP10K_NAMES, "ap10k"),  # regression: every 17-keypoint checkpoint became COCO
        ([n.upper().replace("_", " ") for n in AIC_NAMES], "aic"),  # regression: 14 keypoints became "custom"
    ],
    ids=["coco", "ap10k", "aic"],
)
def test_transformers_layout_is_matched_by_keypoint_names(tmp_path, caplog, names, expected):
    reference, path = build_transformers(tmp_path, True, 1, names=names)
    ours, warnings = _load_with_log(path, caplog)
    assert ours.config.dataset_names == [expected] and not warnings
    info = ours.config.datasets[0]
    assert info["sigmas"] is not None
    # the flip pairs swap the checkpoint's own mirrored labels, all of them
    lowered = [n.lower() for n in names]
    pairs = {
        frozenset((i, lowered.index(_other_side(n))))
        for i, n in enumerate(lowered)
        if _other_side(n) != n and _other_side(n) in lowered
    }
    assert {frozenset(p) for p in info["flip_pairs"]} == pairs
    assert len(pairs) == {"coco": 8, "ap10k": 7, "aic": 6}[expected]
    with torch.no_grad():
        torch.testing.assert_close(ours(X).heatmaps, reference(X).heatmaps, atol=1e-5, rtol=0)


def test_transformers_custom_layout_gets_flip_pairs_from_names(tmp_path, caplog):
    names = ["beak", "LeftWing", "RightWing", "tail", "left foot", "right foot", "eye_l", "eye_r"]
    _, path = build_transformers(tmp_path, True, 1, names=names, edges=[[0, 1], [0, 2], [3, 4], [3, 5], [9, 0]])
    ours, warnings = _load_with_log(path, caplog)
    (info,) = ours.config.datasets
    assert info["name"] == "custom" and info["keypoint_names"] == names and not warnings
    assert sorted(map(sorted, info["flip_pairs"])) == [[1, 2], [4, 5], [6, 7]]
    assert info["skeleton"] == [[0, 1], [0, 2], [3, 4], [3, 5]]  # the edge to a missing keypoint 9 is dropped


def test_transformers_layout_without_pairs_warns(tmp_path, caplog):
    names = ["head", "neck", "tail", "hip", "tip"]
    _, path = build_transformers(tmp_path, True, 1, names=names)
    ours, warnings = _load_with_log(path, caplog)
    assert ours.config.datasets[0]["flip_pairs"] == []
    assert len(warnings) == 1 and str(path) in warnings[0] and "flip test will not swap" in warnings[0]


def test_transformers_checkpoint_without_names(tmp_path, caplog):
    # transformers fills id2label with LABEL_i when no names are given: 17 keypoints are taken as COCO, with a warning
    _, path = build_transformers(tmp_path, True, 1)
    ours, warnings = _load_with_log(path, caplog)
    assert ours.config.dataset_names == ["coco"]
    assert len(warnings) == 1 and "assuming the COCO-17 layout" in warnings[0] and str(path) in warnings[0]
