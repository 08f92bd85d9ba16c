"""Issue 15: MAE pre-training on person crops (`vitpose-hf pretrain-mae`) and its transfer via `train --init_from`."""

import json

import pytest
import torch
import torch.nn.functional as F

from vitpose_hf.cli import COMMANDS
from vitpose_hf.configuration_vitpose_hf import ViTPoseConfig
from vitpose_hf.data import hub_dataset
from vitpose_hf.training import pretrain_mae
from vitpose_hf.training import train as train_module

TINY = [
    "--hidden_size", "32", "--num_hidden_layers", "2", "--num_attention_heads", "2", "--patch_size", "16",
    "--image_size", "64", "--decoder_hidden_size", "16", "--decoder_num_hidden_layers", "1",
    "--decoder_num_attention_heads", "2", "--decoder_intermediate_size", "32",
]  # fmt: skip


@pytest.fixture(scope="module")
def hub_folder(shared_data, tmp_path_factory):
    """The mini-COCO train split (19 images, 70 people) in our Hub schema, via the convert-dataset CLI."""
    root = shared_data / "super-gradients" / "pose_minicoco"
    out = tmp_path_factory.mktemp("hub") / "minicoco"
    code = hub_dataset.main(
        [
            "--annotations",
            str(root / "annotations" / "person_keypoints_train2017.json"),
            "--images",
            str(root / "images" / "train2017"),
            "--split",
            "train",
            "--output",
            str(out),
            "--cache_dir",
            str(out.parent / "cache"),
        ]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def mae_checkpoint(hub_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("mae") / "mae"
    argv = [*TINY, "--dataset_name", str(hub_folder), "--max_train_samples", "6", "--max_train_steps", "3"]
    argv += ["--per_device_train_batch_size", "4", "--dataloader_num_workers", "0", "--cpu", "--output_dir", str(out)]
    assert pretrain_mae.main(argv) == 0
    return out


def test_pretraining_runs_on_person_crops_and_writes_a_vitmae_checkpoint(mae_checkpoint):
    from transformers import ViTMAEForPreTraining

    log = [json.loads(line) for line in (mae_checkpoint / "pretrain_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert all(r["loss"] > 0 and torch.isfinite(torch.tensor(r["loss"])) for r in log)
    model = ViTMAEForPreTraining.from_pretrained(mae_checkpoint)  # transformers' own class reads it back
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (32, 2, 2, 128)
    assert (cfg.image_size, cfg.patch_size, cfg.mask_ratio, cfg.norm_pix_loss) == (64, 16, 0.75, True)
    assert cfg.layer_norm_eps == 1e-6
    # the optimiser moved the encoder away from a fresh model of the same seed
    torch.manual_seed(0)
    fresh = ViTMAEForPreTraining(cfg)
    key = "vit.layers.0.mlp.fc1.weight"
    assert not torch.equal(fresh.state_dict()[key], model.state_dict()[key])


def test_init_from_the_mae_checkpoint_transfers_the_encoder(mae_checkpoint, hub_folder, tmp_path):
    """The training script's model, built with --init_from, holds the MAE encoder's tensors (by name: q/k/v rows
    fused into qkv; the class slot kept and the 4x4 sin-cos grid resized bicubically to the 4x3 pose grid)."""
    from transformers import ViTMAEForPreTraining

    mae = ViTMAEForPreTraining.from_pretrained(mae_checkpoint).state_dict()
    config = ViTPoseConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=(64, 48), patch_size=16
    )
    config.to_json_file(tmp_path / "config.json")
    argv = ["--config_name", str(tmp_path / "config.json"), "--dataset_name", str(hub_folder)]
    argv += ["--dataset_layout", "coco", "--output_dir", str(tmp_path / "out")]
    layouts = [hub_dataset.read_layout("coco")]
    plain = train_module.build_model(train_module.parse_args(argv), layouts).state_dict()
    ours = train_module.build_model(train_module.parse_args([*argv, "--init_from", str(mae_checkpoint)]), layouts)
    ours = ours.state_dict()

    expected = {
        "backbone.patch_embed.proj.weight": mae["vit.embeddings.patch_embeddings.projection.weight"],
        "backbone.patch_embed.proj.bias": mae["vit.embeddings.patch_embeddings.projection.bias"],
    }
    for i in range(2):
        theirs, mine = f"vit.layers.{i}.", f"backbone.blocks.{i}."
        for kind in ("weight", "bias"):
            expected[f"{mine}attn.qkv.{kind}"] = torch.cat(
                [mae[f"{theirs}attention.{n}_proj.{kind}"] for n in ("q", "k", "v")]
            )
            expected[f"{mine}attn.proj.{kind}"] = mae[f"{theirs}attention.o_proj.{kind}"]
            expected[f"{mine}mlp.fc1.{kind}"] = mae[f"{theirs}mlp.fc1.{kind}"]
            expected[f"{mine}mlp.fc2.{kind}"] = mae[f"{theirs}mlp.fc2.{kind}"]
            expected[f"{mine}norm1.{kind}"] = mae[f"{theirs}layernorm_before.{kind}"]
            expected[f"{mine}norm2.{kind}"] = mae[f"{theirs}layernorm_after.{kind}"]
    pos = mae["vit.embeddings.position_embeddings"]  # (1, 1 + 16, 32): class slot + 4x4 grid
    grid = pos[:, 1:].reshape(1, 4, 4, 32).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(4, 3), mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(1, 12, 32)
    expected["backbone.pos_embed"] = torch.cat([pos[:, :1], grid], dim=1)
    for key, value in expected.items():
        torch.testing.assert_close(ours[key], value, rtol=0, atol=1e-6, msg=key)
        assert not torch.equal(plain[key], value), f"{key} equals the fresh model's (the test could not fail)"
    # the MAE model's final norm is not transferred (the official loader starts last_norm fresh)
    torch.testing.assert_close(ours["backbone.last_norm.weight"], plain["backbone.last_norm.weight"])


def test_pretrain_mae_command_and_bad_shapes():
    assert COMMANDS["pretrain-mae"][0] == "vitpose_hf.training.pretrain_mae"
    parser = pretrain_mae.argparse.ArgumentParser()
    pretrain_mae.add_arguments(parser)
    base = ["--dataset_name", "x", "--output_dir", "y"]
    args = parser.parse_args(["--model_size", "b", *base])
    cfg = pretrain_mae.build_mae_config(args)
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (
        768,
        12,
        12,
        3072,
    )
    with pytest.raises(ValueError, match="--model-size, or all of"):
        pretrain_mae.build_mae_config(parser.parse_args(["--hidden_size", "32", *base]))
    with pytest.raises(ValueError, match="not divisible"):
        pretrain_mae.build_mae_config(parser.parse_args([*TINY, "--num_attention_heads", "3", *base]))
    with pytest.raises(ValueError, match="not a multiple of --patch-size"):
        pretrain_mae.build_mae_config(parser.parse_args([*TINY, "--image_size", "72", *base]))


# ---------------------------------------------------------------------------------------------------------------
# resuming after a kill
# ---------------------------------------------------------------------------------------------------------------
KILL_AFTER_STEPS = """
import os, signal, sys
import torch
torch.set_num_threads(2)  # as the test process (conftest): the same arithmetic
from vitpose_hf.training import pretrain_mae
kill_after, done = int(sys.argv[1]), [0]
original = torch.optim.AdamW.step
def step(self, *args, **kwargs):
    out = original(self, *args, **kwargs)
    done[0] += 1
    if done[0] == kill_after:
        os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no clean-up, no final save
    return out
torch.optim.AdamW.step = step
sys.exit(pretrain_mae.main(sys.argv[2:]))
"""


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(hub_folder, tmp_path):
    """7 steps with augmentation, checkpoints every 2 steps. A run SIGKILLed right after its 5th optimiser step (its
    newest checkpoint: step 4), started again with the same command, ends with final weights bit-identical to those
    of an uninterrupted run of the same seed, and the same loss log. A restart with other options is refused."""
    import os
    import signal
    import subprocess
    import sys

    from safetensors.torch import load_file
    from transformers import ViTMAEForPreTraining

    def argv(out):
        return [*TINY, "--dataset_name", str(hub_folder), "--max_train_samples", "6", "--max_train_steps", "7",
                "--per_device_train_batch_size", "4", "--dataloader_num_workers", "0", "--cpu",
                "--checkpointing_steps", "2", "--output_dir", str(out)]  # fmt: skip

    _reset_accelerate()
    assert pretrain_mae.main(argv(tmp_path / "whole")) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(pretrain_mae.__file__).rsplit("/vitpose_hf/", 1)[0]}
    done = subprocess.run([sys.executable, "-c", KILL_AFTER_STEPS, "5", *argv(out)], env=env, capture_output=True)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_2", "step_4"]
    assert not (out / "model.safetensors").exists()
    assert len((out / "pretrain_log.jsonl").read_text().splitlines()) == 4  # killed inside step 5, before its log

    _reset_accelerate()
    with pytest.raises(ValueError, match="other options \\(--mask-ratio 0.75 -> 0.5\\)"):
        pretrain_mae.main([*argv(out), "--mask_ratio", "0.5"])
    _reset_accelerate()
    assert pretrain_mae.main(argv(out)) == 0
    whole, resumed = load_file(tmp_path / "whole" / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(whole) == set(resumed)
    for name, tensor in whole.items():
        assert torch.equal(resumed[name], tensor), name
    log = [json.loads(line) for line in (out / "pretrain_log.jsonl").read_text().splitlines()]
    assert log == [json.loads(line) for line in (tmp_path / "whole" / "pretrain_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 8))
    # the last steps moved the weights (the comparison could fail)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_4", "step_6"]  # the newest 2 kept
    earlier = load_file(out / "checkpoints" / "step_4" / "model.safetensors")
    final = ViTMAEForPreTraining.from_pretrained(out).state_dict()
    assert not torch.equal(earlier["vit.layers.0.mlp.fc1.weight"], final["vit.layers.0.mlp.fc1.weight"])
