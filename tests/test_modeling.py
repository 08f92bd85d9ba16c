"""The model: shapes, faithfulness quirks, PS-FFN routing and cost, heads, loss, errors, save/load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitpose_hf import ViTPoseConfig, ViTPoseForPoseEstimation, ViTPoseModel

from helpers import PLUS_K, official_forward, randomize_batchnorm, tiny_config, tiny_plus_config, to_official_keys

X = torch.randn(4, 3, 64, 48, generator=torch.Generator().manual_seed(0))


def plus_model(seed=0, **overrides):
    torch.manual_seed(seed)
    model = ViTPoseForPoseEstimation(tiny_plus_config(**overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    randomize_batchnorm(model)
    return model


# ---- config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ViTPoseConfig.preset_names())
def test_presets_match_the_paper(name):
    config = ViTPoseConfig.from_preset(name)
    size = name.split("-")[2 if "plus" in name else 1]
    expected = {"s": (384, 12, 12, 0.1), "b": (768, 12, 12, 0.3), "l": (1024, 24, 16, 0.5), "h": (1280, 32, 16, 0.55)}[
        size
    ]
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.drop_path_rate) == expected
    assert config.mlp_ratio == 4 and config.patch_size == 16 and config.image_size == [256, 192]
    assert config.layer_norm_eps == 1e-6 and config.patch_padding == 2 and config.qkv_bias
    assert config.decoder == ("simple" if name.endswith("simple") else "classic")
    if "plus" in name:
        assert config.num_experts == 6 and config.part_features == config.hidden_size // 4
        assert config.dataset_names == ["coco", "aic", "mpii", "ap10k", "apt36k", "wholebody"]
        assert config.num_keypoints == PLUS_K
    else:
        assert config.num_experts == 1 and config.dataset_names == ["coco"]
    assert config.heatmap_size == (64, 48) and config.patch_grid == (16, 12)


def test_config_json_round_trip(tmp_path):
    config = tiny_plus_config(
        datasets=[
            "coco",
            "aic",
            "mpii",
            "ap10k",
            "apt36k",
            {"name": "mine", "keypoint_names": ["a", "b", "c"], "flip_pairs": [[0, 1]]},
        ]
    )
    config.save_pretrained(tmp_path)
    again = ViTPoseConfig.from_pretrained(tmp_path)
    assert again.to_dict() == config.to_dict()
    assert again.datasets[5]["keypoint_names"] == ["a", "b", "c"] and again.num_keypoints[5] == 3
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "vitpose_hf"


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(hidden_size=30), "divisible"),
        (dict(decoder="fancy"), "decoder"),
        (dict(datasets=["coco", "nope"]), "nope"),
        (dict(num_experts=3, part_features=8, datasets=["coco", "aic"]), "one expert per dataset"),
        (dict(num_experts=2, part_features=0, datasets=["coco", "aic"]), "part_features"),
        (dict(datasets=["coco", "coco"]), "unique"),
    ],
)
def test_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="vitpose-x"):
        ViTPoseConfig.from_preset("vitpose-x")


# ---- forward -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["classic", "simple"])
def test_heatmap_shape(decoder):
    config = tiny_config(decoder=decoder, datasets=["aic"])
    out = ViTPoseForPoseEstimation(config).eval()(X)
    grid = ((64 + 4 - 8) // 8 + 1, (48 + 4 - 8) // 8 + 1)
    assert out.heatmaps.shape == (4, 14, 4 * grid[0], 4 * grid[1])
    assert out.num_keypoints.tolist() == [14] * 4 and out.loss is None


def test_matches_independent_official_forward():
    """Patch padding 2, the extra position slot added to every token, eps 1e-6, fused qkv, exact GELU, heads."""
    model = plus_model()
    sd = to_official_keys(model.state_dict())
    with torch.no_grad():
        for d in range(6):
            torch.testing.assert_close(
                model(X, dataset_index=d).heatmaps, official_forward(sd, X, dataset=d), atol=1e-5, rtol=1e-5
            )


def test_tokens_and_feature_maps_are_dense():
    """Memory layout: strided (transposed) views here once made bf16 CPU inference 2.3x slower than transformers."""
    model = ViTPoseForPoseEstimation(tiny_config()).eval()
    seen = {}
    model.backbone.blocks[0].register_forward_pre_hook(lambda module, args: seen.setdefault("tokens", args[0]))
    model.heads[0].register_forward_pre_hook(lambda module, args: seen.setdefault("features", args[0]))
    with torch.no_grad():
        model(X)
    assert seen["tokens"].is_contiguous()  # (B, N, C) rows, what LayerNorm and the residual adds want
    assert seen["features"].is_contiguous()  # plain NCHW into the heads' transposed convolutions


def test_simple_head_equals_upsample_then_conv():
    model = ViTPoseForPoseEstimation(tiny_config(decoder="simple")).eval()
    head = model.heads[0]
    with torch.no_grad():
        head.final_layer.weight.normal_()
        features = torch.randn(2, 32, 8, 6)
        up = torch.nn.functional.interpolate(torch.relu(features), scale_factor=4, mode="bilinear", align_corners=False)
        torch.testing.assert_close(head(features), head.final_layer(up), atol=1e-5, rtol=1e-5)


def test_eager_and_sdpa_agree_and_eager_returns_attentions():
    model = plus_model()
    with torch.no_grad():
        sdpa = model(X, dataset_index=0).heatmaps
        model.set_attn_implementation("eager")
        out = model(X, dataset_index=0, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(out.heatmaps, sdpa, atol=1e-5, rtol=1e-5)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (4, 4, 48, 48)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(4, 4, 48), atol=1e-5, rtol=0)
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (4, 48, 32)


def test_attention_implementation_can_be_switched(monkeypatch):
    model = plus_model()
    with torch.no_grad():
        sdpa = model(X, dataset_index=1).heatmaps
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"

    def refuse(*args, **kwargs):
        raise AssertionError("SDPA called under eager attention")

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", refuse)
    with torch.no_grad():
        torch.testing.assert_close(model(X, dataset_index=1).heatmaps, sdpa, atol=1e-5, rtol=1e-5)


def test_attn_implementation_on_from_pretrained(tmp_path):
    plus_model().save_pretrained(tmp_path)
    assert (
        ViTPoseForPoseEstimation.from_pretrained(tmp_path, attn_implementation="eager").config._attn_implementation
        == "eager"
    )
    assert (
        ViTPoseForPoseEstimation.from_pretrained(tmp_path, attn_implementation="sdpa").config._attn_implementation
        == "sdpa"
    )


# ---- PS-FFN ---------------------------------------------------------------------------------------------------------


def test_mixed_batch_equals_per_sample_runs():
    model = plus_model()
    index = torch.tensor([5, 0, 3, 5])
    with torch.no_grad():
        mixed = model(X, dataset_index=index)
        assert mixed.heatmaps.shape[1] == 133 and mixed.num_keypoints.tolist() == [133, 17, 17, 133]
        for i, d in enumerate(index.tolist()):
            alone = model(X[i : i + 1], dataset_index=d).heatmaps[0]
            k = PLUS_K[d]
            torch.testing.assert_close(mixed.heatmaps[i, :k], alone, atol=1e-5, rtol=1e-5)
            assert mixed.heatmaps[i, k:].abs().max() == 0 if k < 133 else True


@pytest.mark.parametrize("dataset", [0, 3, "wholebody"])
def test_single_dataset_is_identical_and_saves(tmp_path, dataset):
    model = plus_model()
    dense = model.single_dataset(dataset)
    k = model.config.dataset_to_index(dataset)
    assert dense.config.num_experts == 1 and dense.config.dataset_names == [model.config.dataset_names[k]]
    assert not any("experts" in n for n in dense.state_dict())
    with torch.no_grad():
        expected = model(X, dataset_index=k).heatmaps
        torch.testing.assert_close(dense(X).heatmaps, expected, atol=1e-6, rtol=1e-6)
        dense.save_pretrained(tmp_path)
        torch.testing.assert_close(
            ViTPoseForPoseEstimation.from_pretrained(tmp_path).eval()(X).heatmaps, expected, atol=1e-6, rtol=1e-6
        )


def _flops(model, x, **kwargs):
    # autograd on: the plain ops that FlopCounterMode sees (inference fuses them into oneDNN calls)
    with torch.enable_grad(), FlopCounterMode(display=False) as counter:
        model(x, **kwargs)
    return counter.get_total_flops()


def test_expert_cost_does_not_grow_with_experts():
    """A one-dataset batch costs what dense ViTPose costs; a mixed batch routes each sample once."""
    plus = plus_model()
    dense = ViTPoseForPoseEstimation(tiny_config()).eval()
    base = _flops(dense, X)
    assert _flops(plus, X, dataset_index=0) == base
    assert _flops(plus, X, dataset_index=torch.tensor([0, 1, 0, 2])) == _flops(plus, X, dataset_index=0) + (
        _flops(plus.heads[1], torch.zeros(1, 32, 8, 6))
        + _flops(plus.heads[2], torch.zeros(1, 32, 8, 6))
        - 2 * _flops(plus.heads[0], torch.zeros(1, 32, 8, 6))
    )


@pytest.mark.parametrize(
    "index,match",
    [
        (None, "pass dataset_index"),
        (6, "out of range"),
        (-1, "out of range"),
        (torch.tensor([0, 1, 7, 0]), "out of range"),
        ("penguins", "penguins"),
        (torch.tensor([0.0, 1.0, 0.0, 0.0]), "integers"),
        (torch.tensor([0, 1]), "2 entries for a batch of 4"),
    ],
)
def test_dataset_index_errors(index, match):
    with pytest.raises(ValueError, match=match):
        plus_model()(X, dataset_index=index)


def test_dataset_index_by_name_and_broadcast():
    model = plus_model()
    with torch.no_grad():
        a = model(X, dataset_index="ap10k").heatmaps
        b = model(X, dataset_index=torch.tensor([3])).heatmaps
        c = model(X, dataset_index=["ap10k"] * 4).heatmaps
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_images_are_rejected_by_the_processor(bad):
    """Values are checked where images enter, on the host; the model's forward reads none back."""
    from vitpose_hf import ViTPoseImageProcessor

    image = torch.rand(3, 40, 30) * 255
    image[1, 3, 3] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        ViTPoseImageProcessor(size={"height": 64, "width": 48})(image, boxes=[[0, 0, 30, 40]], box_format="xywh")
    with pytest.raises(ValueError, match="NaN or infinite"):
        ViTPoseImageProcessor(size={"height": 64, "width": 48})(
            image.permute(1, 2, 0).numpy(), boxes=[[0, 0, 30, 40]], box_format="xywh"
        )


def test_wrong_pixel_shape_is_rejected():
    with pytest.raises(ValueError, match="shape"):
        ViTPoseForPoseEstimation(tiny_config())(X[:, :2])


# ---- resolution ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(96, 72), (88, 40)], ids=["up-12x9", "mixed-11x5"])
def test_other_resolution_needs_interpolation_on_request(size):
    import cv2  # a test dependency; only this test needs it here

    model = ViTPoseForPoseEstimation(tiny_config()).eval()
    with torch.no_grad():
        model.backbone.pos_embed.normal_(generator=torch.Generator().manual_seed(3))  # slot 0 non-zero too
    big = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(4))
    # with the official padding 2 the token grid is floor((side + 4 - 8) / 8) + 1 per side
    grid = tuple((side + 4 - 8) // 8 + 1 for side in size)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(big)
    with torch.no_grad():
        out = model(big, interpolate_pos_encoding=True, output_hidden_states=True)
        assert out.heatmaps.shape == (2, 17, 4 * grid[0], 4 * grid[1])
        tokens, token_grid = model.backbone.patch_embed(big)
        assert tuple(token_grid) == grid
        position = (out.hidden_states[0] - tokens)[0].numpy()  # what was added to each token
        # reference: OpenCV's INTER_CUBIC on float32, like torch's bicubic (a = -0.75, half-pixel centres,
        # clamped borders), per channel of the 8x6 table; the extra slot 0 is added to every token (official quirk)
        table = model.backbone.pos_embed[0, 1:].reshape(8, 6, -1).numpy()
        expected = cv2.resize(table, (grid[1], grid[0]), interpolation=cv2.INTER_CUBIC).reshape(grid[0] * grid[1], -1)
        expected = expected + model.backbone.pos_embed[0, 0].numpy()
        torch.testing.assert_close(torch.from_numpy(position), torch.from_numpy(expected), atol=1e-5, rtol=1e-5)
        model.config.interpolate_pos_encoding = True
        torch.testing.assert_close(model(big).heatmaps, out.heatmaps)
        # at the trained size interpolation is a no-op
        torch.testing.assert_close(model(X).heatmaps, model(X, interpolate_pos_encoding=False).heatmaps)


# ---- training ------------------------------------------------------------------------------------------------------


def test_loss_is_visibility_weighted_mse():
    model = ViTPoseForPoseEstimation(tiny_config()).eval()
    labels = torch.rand(4, 17, 32, 24)
    weight = (torch.rand(4, 17) > 0.3).float()
    out = model(X, labels=labels, target_weight=weight.unsqueeze(-1))
    expected = (((out.heatmaps - labels) * weight[..., None, None]) ** 2).mean()
    torch.testing.assert_close(out.loss, expected)


def test_each_head_learns_only_from_its_own_samples():
    model = plus_model().train()
    index = torch.tensor([0, 5, 0, 3])
    labels = torch.rand(4, 133, 32, 24)
    out = model(X, dataset_index=index, labels=labels)
    out.loss.backward()
    for d in range(6):
        head_grad = sum(p.grad.abs().sum() for p in model.heads[d].parameters() if p.grad is not None)
        expert_grad = model.backbone.blocks[0].mlp.experts[d].weight.grad
        if d in (0, 3, 5):
            assert head_grad > 0 and expert_grad.abs().sum() > 0
        else:
            assert head_grad == 0 and (expert_grad is None or expert_grad.abs().sum() == 0)
    # the total is the sum of per-head losses, each normalised by the whole batch as in the official code
    with torch.no_grad():
        model.eval()
        hm = model(X, dataset_index=index).heatmaps
        expected = sum(
            ((hm[rows, : PLUS_K[d]] - labels[rows, : PLUS_K[d]]) ** 2).sum() / (4 * PLUS_K[d] * 32 * 24)
            for d, rows in ((0, [0, 2]), (5, [1]), (3, [3]))
        )
        torch.testing.assert_close(model(X, dataset_index=index, labels=labels).loss, expected)


def test_every_parameter_gets_a_gradient():
    model = plus_model(drop_path_rate=0.0).train()  # drop path would skip whole samples' branches
    index = torch.tensor([0, 1, 2, 3, 4, 5])
    x = torch.randn(6, 3, 64, 48)
    model(x, dataset_index=index, labels=torch.rand(6, 133, 32, 24)).loss.backward()
    missing = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert not missing


def test_labels_errors():
    model = ViTPoseForPoseEstimation(tiny_config())
    with pytest.raises(ValueError, match="labels must have shape"):
        model(X, labels=torch.rand(4, 17, 16, 12))
    with pytest.raises(ValueError, match="17 keypoints"):
        model(X, labels=torch.rand(4, 10, 32, 24))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = ViTPoseForPoseEstimation(tiny_config()).train()
    labels = torch.rand(4, 17, 32, 24)
    model(X, labels=labels).loss.backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing_enable()
    model(X, labels=labels).loss.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, plain[n], atol=1e-6, rtol=1e-5, msg=n)


def test_drop_path_is_stochastic_in_training_only():
    model = ViTPoseForPoseEstimation(tiny_config(drop_path_rate=0.5))
    rates = [b.drop_path1.rate for b in model.backbone.blocks]
    assert rates == [0.0, 0.5]
    model.train()
    torch.manual_seed(0)
    a = model.backbone(X).last_hidden_state
    b = model.backbone(X).last_hidden_state
    assert not torch.allclose(a, b)
    model.eval()
    assert torch.equal(model.backbone(X).last_hidden_state, model.backbone(X).last_hidden_state)


def test_param_groups_follow_the_official_layer_decay():
    model = ViTPoseForPoseEstimation(tiny_config())
    groups = model.param_groups(weight_decay=0.1, layer_decay=0.75)
    scale = {n: (g["lr_scale"], g["weight_decay"]) for g in groups for n in g["names"]}
    assert scale["backbone.patch_embed.proj.weight"] == (0.75**3, 0.1)
    assert scale["backbone.pos_embed"] == (0.75**3, 0.0)
    assert scale["backbone.blocks.0.attn.qkv.weight"] == (0.75**2, 0.1)
    assert scale["backbone.blocks.1.mlp.fc1.bias"] == (0.75, 0.0)
    assert scale["heads.0.final_layer.weight"] == (1.0, 0.1)
    assert scale["backbone.last_norm.weight"] == (1.0, 0.0)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# ---- save / load -------------------------------------------------------------------------------------------------


def test_save_load_is_bit_identical(tmp_path):
    model = plus_model()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    again = ViTPoseForPoseEstimation.from_pretrained(tmp_path).eval()
    for (n, a), (m, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert n == m and torch.equal(a, b), n
    with torch.no_grad():
        assert torch.equal(model(X, dataset_index=2).heatmaps, again(X, dataset_index=2).heatmaps)


def test_encoder_loads_alone_and_through_auto_classes(tmp_path):
    from transformers import AutoConfig, AutoModel, AutoModelForPoseEstimation

    model = plus_model()
    model.save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), ViTPoseConfig)
    assert isinstance(AutoModelForPoseEstimation.from_pretrained(tmp_path), ViTPoseForPoseEstimation)
    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(encoder, ViTPoseModel)
    with torch.no_grad():
        torch.testing.assert_close(
            encoder(X, dataset_index=1).last_hidden_state, model.backbone(X, dataset_index=1).last_hidden_state
        )


def test_sharded_checkpoint_round_trip(tmp_path):
    model = plus_model()
    model.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    again = ViTPoseForPoseEstimation.from_pretrained(tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_trust_remote_code_without_the_package(tmp_path):
    from vitpose_hf import ViTPoseImageProcessor

    model = plus_model()
    model.save_pretrained(tmp_path / "ckpt")
    ViTPoseImageProcessor(size={"height": 64, "width": 48}).save_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        torch.save(model(X, dataset_index=4).heatmaps, tmp_path / "expected.pt")
    torch.save(X, tmp_path / "x.pt")
    script = textwrap.dedent(f"""
        import sys
        sys.modules["vitpose_hf"] = None  # make the package unimportable
        try:
            import vitpose_hf
        except ImportError:
            pass
        else:
            raise SystemExit("vitpose_hf is importable")
        import torch
        from transformers import AutoModelForPoseEstimation
        model = AutoModelForPoseEstimation.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert "vitpose_hf" not in type(model).__module__.split(".")[0], type(model).__module__
        with torch.no_grad():
            got = model(torch.load({str(tmp_path / "x.pt")!r}), dataset_index=4).heatmaps
        expected = torch.load({str(tmp_path / "expected.pt")!r})
        assert torch.equal(got, expected), (got - expected).abs().max()
        from transformers import AutoImageProcessor
        processor = AutoImageProcessor.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True)
        assert "vitpose_hf" not in type(processor).__module__.split(".")[0], type(processor).__module__
        image = torch.randint(0, 255, (3, 120, 90), dtype=torch.uint8)
        inputs = processor(image, boxes=[[10, 20, 40, 60]], box_format="xywh")
        with torch.no_grad():
            outputs = model(inputs["pixel_values"], dataset_index=0)
            people = processor.post_process_pose_estimation(outputs, crop_metadata=inputs)
        assert len(people) == 1 and people[0][0]["keypoints"].shape == (17, 2)
        print("remote ok", type(model).__module__)
    """)
    env = {**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "remote ok" in result.stdout
