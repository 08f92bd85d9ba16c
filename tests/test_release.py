"""Release folders (`vitpose-hf push --dry-run`): remote-code loading without the package, sharding, the
transformers-format copy, the upload at the HTTP boundary, and the `keypoint-detection` task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

from vitpose_hf import ViTPoseForPoseEstimation
from vitpose_hf.cli.push import main as push_main
from vitpose_hf.inference.pipeline import TASK, TASK_ALIASES, PoseEstimationPipeline, pipeline
from vitpose_hf.release.folder import PushError, push_folder, remote_code_files
from vitpose_hf.release.variants import Release, list_releases

from helpers import randomize_batchnorm, tiny_config, tiny_plus_config

COMMIT_URL = "https://huggingface.co/someone/vitpose-plus-b-coco/commit/abc"
BOXES = [[60.0, 40.0, 180.0, 260.0], [250.0, 60.0, 120.0, 220.0]]


def _save(model: ViTPoseForPoseEstimation, path: Path) -> Path:
    randomize_batchnorm(model)
    model.eval().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """Dry-run folders of a tiny dense model and a tiny ViTPose++ model, weights sharded at 50 KB."""
    root = tmp_path_factory.mktemp("release")
    torch.manual_seed(0)
    _save(ViTPoseForPoseEstimation(tiny_config()), root / "src_b")
    _save(ViTPoseForPoseEstimation(tiny_plus_config()), root / "src_plus")
    argv = ["--sizes", "b", "--variants", "classic", "plus", "plus-dense", "--out", str(root / "out")]
    argv += ["--source", f"vitpose-b={root / 'src_b'}", "--source", f"vitpose-plus-b={root / 'src_plus'}"]
    assert push_main([*argv, "--any-shape", "--dry-run", "--max-shard-size", "50KB"]) == 0
    return root


@pytest.fixture(scope="module")
def photo(shared_data) -> str:
    return str(shared_data / "mmpose" / "coco" / "000000196141.jpg")


def test_dry_run_writes_every_requested_release(released):
    names = sorted(p.name for p in (released / "out").iterdir())
    assert names == sorted(r.name for r in list_releases(["b"], ["classic", "plus", "plus-dense"]))
    folder = released / "out" / "vitpose-b"
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_vitpose_hf.ViTPoseForPoseEstimation"
    custom = config["custom_pipelines"]["vitpose-keypoint-detection"]
    assert custom["impl"] == "pipeline_vitpose_hf.PoseEstimationPipeline"
    for path in remote_code_files():
        assert (folder / path.name).read_bytes() == path.read_bytes()
    processor_config = json.loads((folder / "preprocessor_config.json").read_text())
    assert processor_config["image_processor_type"] == "ViTPoseImageProcessor"
    assert (folder / "README.md").read_text().startswith("---\n")
    transformers_copy = released / "out" / "vitpose-b-transformers"
    assert not list(transformers_copy.glob("*.py"))  # no remote code in transformers' own format


def test_sharded_weights_round_trip(released):
    for name in ("vitpose-b", "vitpose-plus-b", "vitpose-b-transformers"):
        folder = released / "out" / name
        shards = sorted(folder.glob("model-*-of-*.safetensors"))
        assert len(shards) > 2, name
        assert not (folder / "model.safetensors").exists()
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        merged = {}
        for shard in shards:
            part = load_file(shard)
            assert all(index["weight_map"][key] == shard.name for key in part)
            merged.update(part)
        assert set(merged) == set(index["weight_map"])
    source = ViTPoseForPoseEstimation.from_pretrained(released / "src_plus")
    reloaded = ViTPoseForPoseEstimation.from_pretrained(released / "out" / "vitpose-plus-b")
    expected, got = source.state_dict(), reloaded.state_dict()
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_dense_release_equals_the_six_head_model(released):
    plus = ViTPoseForPoseEstimation.from_pretrained(released / "out" / "vitpose-plus-b").eval()
    dense = ViTPoseForPoseEstimation.from_pretrained(released / "out" / "vitpose-plus-b-ap10k").eval()
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(dense(x).heatmaps, plus(x, dataset_index="ap10k").heatmaps, atol=1e-5, rtol=1e-4)


def test_transformers_copy_runs_in_transformers(released):
    theirs = transformers.VitPoseForPoseEstimation.from_pretrained(released / "out" / "vitpose-b-transformers").eval()
    ours = ViTPoseForPoseEstimation.from_pretrained(released / "src_b").eval()
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).heatmaps, ours(x).heatmaps, atol=1e-5, rtol=1e-4)
    processor = transformers.AutoImageProcessor.from_pretrained(released / "out" / "vitpose-b-transformers")
    assert type(processor).__name__.startswith("VitPoseImageProcessor")
    assert processor.size == {"height": 64, "width": 48}


def test_remote_code_without_the_package(released, photo, tmp_path):
    """A fresh interpreter whose path has no vitpose_hf loads the folder and gives the package's keypoints."""
    folder = released / "out" / "vitpose-plus-b"
    expected = pipeline(str(folder), device="cpu")(photo, boxes=BOXES, dataset="mpii")
    script = textwrap.dedent(f"""
        import json, sys
        sys.modules["vitpose_hf"] = None  # unimportable even if installed
        assert not any("vitpose" in p for p in sys.path), sys.path
        import torch, transformers
        from transformers import AutoImageProcessor, AutoModel, pipeline
        folder, photo, boxes = {str(folder)!r}, {photo!r}, {BOXES!r}
        pose = pipeline(model=folder, trust_remote_code=True, device="cpu")
        assert type(pose).__module__.startswith("transformers_modules"), type(pose).__module__
        people = pose(photo, boxes=boxes, dataset="mpii")
        model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        inputs = processor(photo, boxes=boxes, box_format="xywh", dataset="mpii")
        with torch.no_grad():
            outputs = model(inputs["pixel_values"], dataset_index="mpii")
        raw = processor.post_process_pose_estimation(outputs, crop_metadata=inputs)[0]
        print(json.dumps({{"pipeline": people, "raw": [p["keypoints"].tolist() for p in raw],
                          "modules": sorted({{type(model).__module__, type(processor).__module__}})}}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(m.startswith("transformers_modules") for m in got["modules"]), got["modules"]
    assert got["pipeline"] == expected
    for person, raw in zip(expected, got["raw"]):
        xy = np.array([[k["x"], k["y"]] for k in person["keypoints"]])
        np.testing.assert_allclose(np.array(raw), xy, atol=1e-4)


def test_keypoint_detection_task_builds_our_pipeline(released, photo):
    folder = str(released / "out" / "vitpose-b")
    assert TASK == "keypoint-detection" and "pose-estimation" in TASK_ALIASES
    results = []
    for task in (TASK, *TASK_ALIASES):
        pose = transformers.pipeline(task, model=folder, device="cpu")
        assert isinstance(pose, PoseEstimationPipeline)
        results.append(pose(photo, boxes=BOXES))
    assert results[0] == results[1]
    assert [k["name"] for k in results[0][0]["keypoints"]][:3] == ["nose", "left_eye", "right_eye"]


# ----------------------------------------------------------------------------------------------------------------
# Upload, checked at the HTTP boundary: huggingface_hub's own httpx client is replaced by one whose transport
# (httpx.MockTransport) answers as the Hub would; everything above the transport is the real huggingface_hub.
# ----------------------------------------------------------------------------------------------------------------
class FakeHub:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        path = request.url.path
        if path == "/api/repos/create":
            body = json.loads(request.content)
            return httpx.Response(200, json={"url": f"https://huggingface.co/{body['organization']}/{body['name']}"})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return httpx.Response(200, json={"files": modes})
        if "/commit/" in path:
            return httpx.Response(200, json={"commitUrl": COMMIT_URL, "commitOid": "a" * 40})
        return httpx.Response(200, json={})


def test_upload_sends_the_folder_to_the_repo(released, monkeypatch):
    import huggingface_hub

    hub = FakeHub()
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(hub)))
    try:
        folder = released / "out" / "vitpose-plus-b-coco"
        url = push_folder(folder, "someone/vitpose-plus-b-coco", token="hf_test")
    finally:
        huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)
        huggingface_hub.close_session()
    assert url == COMMIT_URL
    create = [r for r in hub.requests if r.url.path == "/api/repos/create"]
    assert len(create) == 1
    assert json.loads(create[0].content).items() >= {"name": "vitpose-plus-b-coco", "organization": "someone"}.items()
    assert create[0].headers["authorization"] == "Bearer hf_test"
    commits = [r for r in hub.requests if r.url.path == "/api/models/someone/vitpose-plus-b-coco/commit/main"]
    assert len(commits) == 1
    lines = [json.loads(line) for line in commits[0].content.decode().splitlines() if line.strip()]
    sent = sorted(line["value"]["path"] for line in lines if line["key"] == "file")
    assert sent == sorted(p.name for p in folder.iterdir())


def test_upload_errors_are_clear(released, monkeypatch):
    import huggingface_hub

    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PushError, match="no Hugging Face token"):
        push_folder(released / "out" / "vitpose-b", "someone/x")

    def unreachable(request):
        raise httpx.ConnectError("connection refused", request=request)

    huggingface_hub.set_client_factory(lambda: httpx.Client(transport=httpx.MockTransport(unreachable)))
    try:
        with pytest.raises(PushError, match="cannot reach the Hugging Face Hub"):
            push_folder(released / "out" / "vitpose-b", "someone/x", token="hf_test")
    finally:
        huggingface_hub.set_client_factory(huggingface_hub.utils._http.default_client_factory)
        huggingface_hub.close_session()


def test_push_refuses_a_source_of_another_shape(released, capsys):
    argv = ["--sizes", "b", "--variants", "classic", "--source", f"vitpose-b={released / 'src_b'}"]
    with pytest.raises(ValueError, match="not a vitpose-b model: hidden_size 32"):
        push_main([*argv, "--out", str(released / "other"), "--dry-run"])
    assert Release("vitpose-plus-b-coco", "vitpose-plus-b", "coco").coco_only


def test_an_existing_keypoint_detection_pipeline_keeps_its_models(released, photo, monkeypatch):
    """Should transformers (or another library) serve keypoint-detection already, ViTPose checkpoints get our
    pipeline and its models (here a tiny SuperPoint) keep theirs."""
    from transformers import AutoModelForKeypointDetection, Pipeline, SuperPointConfig, SuperPointForKeypointDetection
    from transformers.pipelines import PIPELINE_REGISTRY

    from vitpose_hf.inference.pipeline import register_pipeline

    class TheirKeypointPipeline(Pipeline):
        _load_image_processor = False
        _load_tokenizer = False
        _load_processor = False
        _load_feature_extractor = False

        def _sanitize_parameters(self, **kwargs):
            return {}, {}, {}

        def preprocess(self, inputs):
            return inputs

        def _forward(self, inputs):
            return inputs

        def postprocess(self, outputs):
            return outputs

    theirs = {"impl": TheirKeypointPipeline, "pt": (AutoModelForKeypointDetection,), "type": "image"}
    monkeypatch.setitem(PIPELINE_REGISTRY.supported_tasks, TASK, theirs)
    register_pipeline()
    entry = PIPELINE_REGISTRY.supported_tasks[TASK]
    assert entry["impl"].builtin is TheirKeypointPipeline
    superpoint = released / "superpoint"
    config = SuperPointConfig(encoder_hidden_sizes=[8, 8, 8, 8], decoder_hidden_size=16, descriptor_decoder_dim=16)
    SuperPointForKeypointDetection(config).save_pretrained(superpoint)
    assert isinstance(transformers.pipeline(TASK, model=str(superpoint), device="cpu"), TheirKeypointPipeline)
    for name in ("vitpose-b", "vitpose-b-transformers"):  # ours, and transformers' vitpose format (converted)
        pose = transformers.pipeline(TASK, model=str(released / "out" / name), device="cpu")
        assert isinstance(pose, PoseEstimationPipeline), name
        assert len(pose(photo, boxes=BOXES)) == 2


def test_sources_official_pth_and_transformers_checkpoint(released, tmp_path):
    """Releases cut from an official .pth (checked against the functional official forward) and from a
    transformers vitpose checkpoint (the released -transformers copy, back to the original model)."""
    from helpers import official_forward, official_state_dict

    state = official_state_dict(head_k=(17, 14, 16, 17, 17, 133), experts=6, cls_token=True)
    torch.save({"state_dict": state, "meta": {}}, tmp_path / "vitpose_plus_b.pth")
    argv = ["--sizes", "b", "--variants", "classic", "plus-dense", "--no-transformers-copies", "--any-shape"]
    argv += ["--source", f"vitpose-plus-b={tmp_path / 'vitpose_plus_b.pth'}", "--num-attention-heads", "4"]
    argv += ["--source", f"vitpose-b={released / 'out' / 'vitpose-b-transformers'}", "--out", str(tmp_path / "out")]
    assert push_main(argv) == 0
    x = torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(3))
    wholebody = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "out" / "vitpose-plus-b-wholebody").eval()
    original = ViTPoseForPoseEstimation.from_pretrained(released / "src_b").eval()
    again = ViTPoseForPoseEstimation.from_pretrained(tmp_path / "out" / "vitpose-b").eval()
    with torch.no_grad():
        torch.testing.assert_close(wholebody(x).heatmaps, official_forward(state, x, dataset=5), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(again(x).heatmaps, original(x).heatmaps, atol=1e-5, rtol=1e-4)


def test_push_names_what_is_missing(capsys, tmp_path):
    assert push_main(["--sizes", "s", "--variants", "plus", "--out", str(tmp_path)]) == 2
    assert "no --source for vitpose-plus-s" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="--source takes KEY=SRC"):
        push_main(["--sizes", "s", "--variants", "classic", "--source", "model.pth"])
    assert not any(tmp_path.iterdir())  # nothing written
