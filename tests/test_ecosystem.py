"""The model as the ecosystem uses it: fused optimizers, PEFT, inference_mode, autocast, torch.compile, hooks.

Each check compares against an independent reference: a fresh deep copy, a formula computed here, the functional
official forward in `helpers`, or transformers' VitPose with the same weights.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vitpose_hf import ViTPoseForPoseEstimation

from helpers import official_forward, randomize_batchnorm, tiny_config, tiny_plus_config, to_official_keys

X = torch.randn(4, 3, 64, 48, generator=torch.Generator().manual_seed(1))


def perturbed(model: ViTPoseForPoseEstimation, seed: int = 0) -> ViTPoseForPoseEstimation:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    randomize_batchnorm(model, seed)
    return model.eval()


def dense_model(seed: int = 0, **overrides) -> ViTPoseForPoseEstimation:
    torch.manual_seed(seed)
    return perturbed(ViTPoseForPoseEstimation(tiny_config(**overrides)), seed)


def plus_model(seed: int = 0, **overrides) -> ViTPoseForPoseEstimation:
    torch.manual_seed(seed)
    return perturbed(ViTPoseForPoseEstimation(tiny_plus_config(**overrides)), seed)


def heatmaps(model, x=X, autocast: bool = False, **kwargs) -> torch.Tensor:
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        return model(x, **kwargs).heatmaps.float()


# ---- weights that change under the model: fused optimizers, .data, load_state_dict, .to -------------------------


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
@pytest.mark.parametrize("build,kwargs", [(dense_model, {}), (plus_model, {"dataset_index": 3})], ids=["dense", "plus"])
def test_fused_adamw_with_evaluation_in_between_sees_current_weights(build, kwargs, autocast):
    """`AdamW(fused=True)` updates weights without bumping version counters; eval must still see them."""
    model = build(drop_path_rate=0.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    labels = torch.rand(4, model.config.num_keypoints[kwargs.get("dataset_index", 0)], 32, 24)
    for _ in range(3):
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(X, labels=labels, **kwargs).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        model.eval()
        got = heatmaps(model, autocast=autocast, **kwargs)
        fresh = copy.deepcopy(model)
        assert torch.equal(got, heatmaps(fresh, autocast=autocast, **kwargs))


def test_data_writes_load_state_dict_dtype_and_mode_switches_are_seen():
    model = plus_model()
    heatmaps(model, autocast=True, dataset_index=0)
    heatmaps(model, dataset_index=0)

    def check(m, autocast=True):
        assert torch.equal(
            heatmaps(m, autocast=autocast, dataset_index=0),
            heatmaps(copy.deepcopy(m), autocast=autocast, dataset_index=0),
        )

    model.backbone.blocks[1].mlp.fc1.weight.data.mul_(3.0)
    model.backbone.blocks[0].mlp.experts[0].weight.data = torch.randn_like(
        model.backbone.blocks[0].mlp.experts[0].weight
    )
    check(model)
    model.load_state_dict(plus_model(seed=5).state_dict())
    check(model)
    model.train().eval()
    check(model)
    model64 = model.to(torch.float64)
    with torch.no_grad():
        out = model64(X.double(), dataset_index=0).heatmaps
    assert out.dtype == torch.float64
    expected = official_forward(to_official_keys({k: v.double() for k, v in model64.state_dict().items()}), X.double())
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)


def test_the_model_holds_no_tensors_besides_parameters_and_buffers():
    """Nothing is cached between calls: no copies that pin memory or go stale."""
    model = plus_model()
    heatmaps(model, autocast=True, dataset_index=2)
    heatmaps(model, dataset_index=torch.tensor([0, 1, 2, 2]))
    for name, module in model.named_modules():
        extra = [
            k
            for k, v in vars(module).items()
            if isinstance(v, torch.Tensor)
            or (
                isinstance(v, dict)
                and k not in ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")
                and any(isinstance(t, torch.Tensor) for t in v.values())
            )
        ]
        assert not extra, (name, extra)


# ---- PEFT -----------------------------------------------------------------------------------------------------------

LORA_TARGETS = r".*\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2|mlp\.experts\.\d+)"


def lora_merged_state(peft_model) -> dict:
    """Our state dict with every LoRA layer folded in by hand: W + scaling * B @ A (bias unchanged)."""
    from peft.tuners.lora import LoraLayer

    state = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer):
            base = module.base_layer
            A, B = module.lora_A["default"].weight, module.lora_B["default"].weight
            state[name + ".weight"] = base.weight + module.scaling["default"] * (B @ A)
            state[name + ".bias"] = base.bias
    plain = {
        k.replace(".base_layer", ""): v for k, v in peft_model.base_model.model.state_dict().items() if "lora_" not in k
    }
    plain.update(state)
    return {k: v.detach() for k, v in plain.items()}


def test_peft_lora_on_every_projection_adds_b_a_x():
    peft = pytest.importorskip("peft")
    model = plus_model()
    lora = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False)
    )
    wrapped = [n for n, m in lora.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(wrapped) == 2 * (4 + 6)  # per block: qkv, proj, fc1, fc2 and six experts
    sd = to_official_keys(lora_merged_state(lora))
    index = torch.tensor([5, 0, 3, 3])
    with torch.no_grad():
        for d in (0, 3, 5):  # one-dataset batches
            torch.testing.assert_close(
                lora(X, dataset_index=d).heatmaps, official_forward(sd, X, dataset=d), atol=1e-5, rtol=1e-5
            )
        mixed = lora(X, dataset_index=index)
        for i, d in enumerate(index.tolist()):  # each sample of a mixed batch through its own LoRA expert
            k = model.config.num_keypoints[d]
            torch.testing.assert_close(
                mixed.heatmaps[i : i + 1, :k], official_forward(sd, X[i : i + 1], dataset=d), atol=1e-5, rtol=1e-5
            )
        merged = lora.merge_and_unload()
        torch.testing.assert_close(merged(X, dataset_index=index).heatmaps, mixed.heatmaps, atol=1e-5, rtol=1e-5)


def test_peft_lora_on_fc1_applies_before_the_gelu():
    """A forward hook on the LoRA-wrapped fc1 sees exactly W x + b + s B A x, and the FFN applies GELU to it."""
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(
        dense_model(), peft.LoraConfig(r=2, lora_alpha=2, target_modules=["fc1"], init_lora_weights=False)
    )
    layer = lora.base_model.model.backbone.blocks[0].mlp.fc1
    seen = {}
    layer.register_forward_hook(lambda m, args, out: seen.update(x=args[0], y=out))
    act_in = {}
    lora.base_model.model.backbone.blocks[0].mlp.act.register_forward_hook(
        lambda m, args, out: act_in.update(x=args[0], y=out)
    )
    with torch.no_grad():
        lora(X)
    W, b = layer.base_layer.weight, layer.base_layer.bias
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    expected = seen["x"] @ W.T + b + layer.scaling["default"] * (seen["x"] @ A.T @ B.T)
    torch.testing.assert_close(seen["y"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(act_in["x"], seen["y"])
    torch.testing.assert_close(act_in["y"], torch.nn.functional.gelu(expected), atol=1e-5, rtol=1e-5)


def test_forward_hooks_on_every_linear_fire_for_dense_and_mixed_batches():
    model = plus_model()
    calls = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(
                lambda m, a, o, name=name: calls.__setitem__(name, calls.get(name, 0) + a[0].shape[0])
            )
    with torch.no_grad():
        model(X, dataset_index=torch.tensor([0, 2, 2, 5]))
    for i in range(2):
        p = f"backbone.blocks.{i}."
        assert calls[p + "attn.qkv"] == 4 and calls[p + "mlp.fc1"] == 4 and calls[p + "mlp.fc2"] == 4
        assert calls[p + "mlp.experts.0"] == 1 and calls[p + "mlp.experts.2"] == 2 and calls[p + "mlp.experts.5"] == 1
        assert p + "mlp.experts.1" not in calls


# ---- inference_mode, autocast ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_built_and_run_under_inference_mode(autocast):
    with torch.inference_mode():
        model = ViTPoseForPoseEstimation(tiny_plus_config()).eval()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            for index in (1, "wholebody", torch.tensor([0, 1, 5, 5])):
                out = model(X, dataset_index=index).heatmaps
                assert torch.isfinite(out.float()).all()
    dense = dense_model()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        assert dense(X).heatmaps.shape == (4, 17, 32, 24)


def test_residual_stream_stays_fp32_under_autocast():
    model = plus_model()
    dtypes = []
    for block in model.backbone.blocks:
        block.register_forward_hook(lambda m, a, out: dtypes.append(out[0].dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(X, dataset_index=2, output_hidden_states=True)
    assert dtypes == [torch.float32, torch.float32]
    assert all(h.dtype == torch.float32 for h in out.hidden_states)
    # the matmuls did run in bf16: a forward hook on qkv sees bf16
    seen = []
    model.backbone.blocks[0].attn.qkv.register_forward_hook(lambda m, a, o: seen.append(o.dtype))
    heatmaps(model, autocast=True, dataset_index=2)
    assert seen == [torch.bfloat16]


def test_bf16_error_is_no_worse_than_transformers_with_the_same_weights(tmp_path):
    from transformers import VitPoseForPoseEstimation as HFVitPose

    from vitpose_hf.cli.convert import export_transformers

    torch.manual_seed(0)
    ours = perturbed(ViTPoseForPoseEstimation(tiny_config(hidden_size=64, num_hidden_layers=4)))
    export_transformers(ours, tmp_path)
    theirs = HFVitPose.from_pretrained(tmp_path).eval()
    x = torch.randn(8, 3, 64, 48, generator=torch.Generator().manual_seed(3))

    def relative_error(model):
        with torch.no_grad():
            ref = model(x).heatmaps.float()
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(x).heatmaps.float()
        return ((low - ref).norm() / ref.norm()).item(), ref

    err_ours, ref_ours = relative_error(ours)
    err_theirs, ref_theirs = relative_error(theirs)
    torch.testing.assert_close(ref_ours, ref_theirs, atol=1e-5, rtol=1e-5)  # same model in fp32
    assert 0 < err_ours <= err_theirs * 1.05, (err_ours, err_theirs)


# ---- compile, graph breaks, host syncs -----------------------------------------------------------------------------


class CountSyncs(TorchDispatchMode):
    """Counts the ops that copy a device value to the host (`.item()`, `bool(t)`, `.tolist()`)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "build,kwargs",
    [
        (dense_model, {}),
        (plus_model, {"dataset_index": 3}),
        (plus_model, {"dataset_index": "wholebody"}),
        (plus_model, {"dataset_index": np.int64(1)}),
    ],
    ids=["dense", "plus-int", "plus-name", "plus-numpy-int"],
)
def test_no_host_sync_in_forward(build, kwargs):
    model = build()
    with torch.no_grad(), CountSyncs() as counter:
        model(X, **kwargs)
    assert counter.count == 0
    with CountSyncs() as counter:  # training forward and backward too
        model.train()(X, labels=torch.rand(4, 133, 32, 24), **kwargs).loss.backward()
    assert counter.count == 0


def test_the_sync_counter_does_count_syncs():
    with CountSyncs() as counter:
        torch.ones(2).sum().item()
        bool(torch.ones(1) > 0)
    assert counter.count == 2


@pytest.mark.parametrize("build,kwargs", [(dense_model, {}), (plus_model, {"dataset_index": 4})], ids=["dense", "plus"])
def test_dynamo_sees_no_graph_break(build, kwargs):
    import torch._dynamo

    model = build()
    torch._dynamo.reset()
    with torch.no_grad():
        explanation = torch._dynamo.explain(model)(X, **kwargs)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_model_equals_eager():
    model = plus_model()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(
            compiled(X, dataset_index=2).heatmaps, model(X, dataset_index=2).heatmaps, atol=1e-5, rtol=1e-5
        )
        torch.testing.assert_close(
            compiled(X[:2], dataset_index="ap10k").heatmaps,
            model(X[:2], dataset_index=3).heatmaps,
            atol=1e-5,
            rtol=1e-5,
        )


# ---- attention implementations -------------------------------------------------------------------------------


@pytest.mark.parametrize("implementation", ["eager", "sdpa", "flash_attention_2"])
def test_attention_implementations_agree(tmp_path, implementation):
    if implementation == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not (is_flash_attn_2_available() and torch.cuda.is_available()):
            pytest.skip("flash-attn is not installed here (it needs CUDA)")
    model = plus_model()
    reference = official_forward(to_official_keys(model.state_dict()), X, dataset=1)
    model.save_pretrained(tmp_path)
    device = "cuda" if implementation == "flash_attention_2" else "cpu"
    dtype = torch.bfloat16 if implementation == "flash_attention_2" else torch.float32
    loaded = (
        ViTPoseForPoseEstimation.from_pretrained(tmp_path, attn_implementation=implementation, dtype=dtype)
        .to(device)
        .eval()
    )
    with torch.no_grad():
        out = loaded(X.to(device, dtype), dataset_index=1)
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5
    torch.testing.assert_close(out.heatmaps.float().cpu(), reference, atol=tol, rtol=tol)


def test_eager_attention_maps_are_the_softmax_of_scaled_scores():
    model = dense_model()
    model.set_attn_implementation("eager")
    block = model.backbone.blocks[0]
    seen = {}
    block.attn.qkv.register_forward_hook(lambda m, a, o: seen.update(qkv=o))
    with torch.no_grad():
        out = model(X, output_attentions=True)
    B, N, _ = seen["qkv"].shape
    q, k, _ = seen["qkv"].view(B, N, 3, 4, 8).permute(2, 0, 3, 1, 4)
    expected = torch.softmax(q @ k.transpose(-2, -1) / 8**0.5, dim=-1)
    torch.testing.assert_close(out.attentions[0], expected, atol=1e-6, rtol=1e-5)


# ---- argument checks -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build,kwargs,k",
    [
        (dense_model, {}, 17),
        (plus_model, {"dataset_index": 5}, 133),
        (plus_model, {"dataset_index": "aic"}, 14),
        (plus_model, {"dataset_index": torch.tensor([2])}, 16),
    ],
    ids=["dense", "plus-int", "plus-name", "plus-one-element-tensor"],
)
def test_empty_batch_gives_empty_heatmaps(build, kwargs, k):
    model = build()
    with torch.no_grad():
        out = model(torch.zeros(0, 3, 64, 48), **kwargs)
    assert out.heatmaps.shape == (0, k, 32, 24) and out.num_keypoints.shape == (0,) and out.dataset_index.shape == (0,)


def test_empty_batch_trains_to_a_zero_loss():
    model = plus_model().train()
    loss = model(torch.zeros(0, 3, 64, 48), dataset_index=1, labels=torch.zeros(0, 14, 32, 24)).loss
    assert loss.item() == 0.0


@pytest.mark.parametrize(
    "index,expected",
    [
        (np.int64(2), [2] * 4),
        (np.array([0, 1, 2, 3]), [0, 1, 2, 3]),
        ([5, "coco", np.int32(3), 3], [5, 0, 3, 3]),
        ((1, 1, 1, 1), [1] * 4),
        (torch.tensor([[4]]), [4] * 4),
        (torch.tensor([3, 3, 3, 3], dtype=torch.int32), [3] * 4),
    ],
)
def test_dataset_index_forms(index, expected):
    model = plus_model()
    with torch.no_grad():
        out = model(X, dataset_index=index)
        assert out.dataset_index.tolist() == expected
        for i, d in enumerate(expected):
            k = model.config.num_keypoints[d]
            torch.testing.assert_close(
                out.heatmaps[i, :k], model(X[i : i + 1], dataset_index=d).heatmaps[0], atol=1e-5, rtol=1e-5
            )


@pytest.mark.parametrize(
    "index", [True, np.bool_(False), [0, True, 0, 0], torch.tensor([True, False, True, True]), np.array([1.0] * 4)]
)
def test_bool_and_float_dataset_indices_are_refused(index):
    with pytest.raises(ValueError, match="bool|integers"):
        plus_model()(X, dataset_index=index)


def test_unknown_keyword_arguments_are_named():
    model = dense_model()
    with pytest.raises(TypeError, match="colour"):
        model(X, colour="red")
    with pytest.raises(TypeError, match="flip_pairs.*flip_pixel_values"):
        model(X, flip_pairs=[[1, 2]])
    with pytest.raises(TypeError, match="colour"):
        model.backbone(X, colour="red")


@pytest.mark.parametrize("pixels,match", [([[0.0]], "list"), (np.zeros((1, 3, 64, 48), np.float32), "numpy|ndarray")])
def test_pixel_values_that_are_not_tensors(pixels, match):
    with pytest.raises(TypeError, match=match):
        dense_model()(pixels)


def test_pixel_values_of_another_float_dtype_are_cast():
    model = dense_model()
    with torch.no_grad():
        torch.testing.assert_close(model(X.double()).heatmaps, model(X).heatmaps)
        half = model.to(torch.bfloat16)(X).heatmaps
    assert half.dtype == torch.bfloat16


def test_outputs_carry_the_model_dataset_metadata():
    model = plus_model()
    with torch.no_grad():
        out = model(X, dataset_index=torch.tensor([3, 0, 3, 5]))
    assert [d["name"] for d in out.datasets] == model.config.dataset_names
    assert [out.datasets[i]["name"] for i in out.dataset_index.tolist()] == ["ap10k", "coco", "ap10k", "wholebody"]
    assert out.datasets[3]["keypoint_names"][4] == "root_of_tail"
