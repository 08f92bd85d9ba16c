"""The device path does not wait for the device between the crops and the decoded keypoints.

On a GPU, any read of a device value on the host (``.item()``, ``bool(t)``, ``.tolist()``, ``.cpu()``, a boolean
mask or ``nonzero``) waits for every queued kernel. Tensors on the ``meta`` device have shapes but no data, so
each of those reads raises there: a crop -> model -> decode chain that runs to the end on ``meta`` cannot contain
one. PyTorch's default (blocking) host-to-device copy synchronises the CUDA stream as well; :class:`BlockingCopies`
records each one (``tensor.to(device)``, ``device_tensor[...] = host_tensor``, ``torch.tensor(data, device=...)``),
so the tests also check that every host value reaches the device with a non-blocking copy.
This checks on any CPU what a GPU run would show.
"""

from __future__ import annotations

import traceback

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from vitpose_hf import ViTPoseForPoseEstimation, ViTPoseImageProcessor
from vitpose_hf.devices import to_device
from vitpose_hf.image_processing_vitpose_hf import flip_pixel_values
from vitpose_hf.inference.pipeline import PoseEstimationPipeline
from vitpose_hf.pipeline_vitpose_hf import _Images

from helpers import tiny_config, tiny_plus_config

SIZE = {"height": 64, "width": 48}
RNG = np.random.default_rng(0)
IMAGE = RNG.integers(0, 256, (120, 100, 3), dtype=np.uint8)
OTHER = RNG.integers(0, 256, (90, 80, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "read",
    [
        lambda t: t.sum().item(),
        lambda t: bool(t.sum() > 0),
        lambda t: t.tolist(),
        lambda t: t.cpu(),
        lambda t: t[t > 0],
        lambda t: int(t.max()),
    ],
    ids=["item", "bool", "tolist", "cpu", "mask", "int"],
)
def test_meta_tensors_refuse_every_host_read(read):
    """The premise of this file: each kind of device-to-host read fails on meta."""
    with pytest.raises((RuntimeError, NotImplementedError)):
        read(torch.ones(3, device="meta"))


class BlockingCopies(TorchDispatchMode):
    """Records blocking host-to-device copies, with the line of vitpose_hf that made each."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        super().__init__()
        self.found: list[str] = []
        # torch.tensor / as_tensor with a device copy inside C++, out of this mode's sight: watch the calls
        for name in ("tensor", "as_tensor"):
            original = getattr(torch, name)
            monkeypatch.setattr(torch, name, self._watch(original, name))

    def _where(self, what: str) -> None:
        ours = [line for line in traceback.format_stack() if "vitpose_hf" in line and "test_device_path" not in line]
        self.found.append(f"{what} at {ours[-1].strip() if ours else '?'}")

    def _watch(self, original, name):
        def call(data, *args, **kwargs):
            device = kwargs.get("device")
            if device is not None and torch.device(device).type != "cpu" and not isinstance(data, torch.Tensor):
                self._where(f"torch.{name}(..., device={device})")
            return original(data, *args, **kwargs)

        return call

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default:
            target = kwargs.get("device")
            if args[0].device.type == "cpu" and target is not None and torch.device(target).type != "cpu":
                if not kwargs.get("non_blocking", False):
                    self._where("blocking .to(device)")
        elif func is torch.ops.aten.copy_.default and args[1].device.type == "cpu" and args[0].device.type != "cpu":
            if not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False)):
                self._where("blocking copy_ from the host")
        return func(*args, **kwargs)


def test_the_copy_recorder_sees_each_kind_of_blocking_copy(monkeypatch):
    recorder = BlockingCopies(monkeypatch)
    with recorder:
        torch.tensor([1.0, 2.0], device="meta")
        torch.ones(2).to("meta")
        torch.empty(2, device="meta")[:] = torch.ones(2)
        to_device(torch.ones(2), "meta")  # non-blocking: not recorded
        torch.zeros(2, device="meta")  # made on the device: no copy
    assert len(recorder.found) == 3, recorder.found


def meta_model(config) -> ViTPoseForPoseEstimation:
    return ViTPoseForPoseEstimation(config).eval().to("meta")


@pytest.mark.parametrize(
    "images,boxes,extra",
    [
        (IMAGE, [[5, 5, 30, 40], [10, 10, 50, 60]], {}),
        ([IMAGE, OTHER], [[[5, 5, 30, 40]], [[1, 2, 30, 40], [3, 3, 20, 20]]], {}),
        (IMAGE, [[5, 5, 30, 40], [10, 10, 50, 60]], {"rotation": [10.0, -20.0], "scale_factor": 1.2}),
    ],
    ids=["one-image", "two-images", "rotation-scale"],
)
def test_dense_crop_model_decode_with_flip_test_never_waits_for_the_device(images, boxes, extra, monkeypatch):
    model = meta_model(tiny_config())
    processor = ViTPoseImageProcessor(size=SIZE)
    copies = BlockingCopies(monkeypatch)
    with copies:
        crops = processor(images, boxes=boxes, box_format="xywh", device="meta", **extra)
        with torch.no_grad():
            outputs = model(crops["pixel_values"])
            flipped = model(flip_pixel_values(crops["pixel_values"]))
        people = processor.post_process_pose_estimation(
            outputs, crop_metadata=crops, flip_outputs=flipped, dataset_index=0
        )
    assert copies.found == []
    assert crops["pixel_values"].is_meta and crops["center"].is_meta
    # the bookkeeping that post-processing reads on the host stays there
    for key in ("image_index", "crops_per_image", "use_udp") + (("rotation",) if extra else ()):
        assert crops[key].device.type == "cpu", key
    n_images = 2 if isinstance(images, list) else 1
    assert len(people) == n_images
    person = people[-1][-1]
    assert person["keypoints"].is_meta and person["keypoints"].shape == (17, 2) and person["scores"].shape == (17,)


def test_vitpose_plus_mixed_batch_with_host_dataset_index_never_waits_for_the_device(monkeypatch):
    """Six heads, UDP and classic datasets mixed in one batch, flip test: routing and decoding stay on the device."""
    model = meta_model(tiny_plus_config())
    datasets = list(model.config.datasets)
    assert {d["use_udp"] for d in datasets} == {True, False}  # both decoders and both flip shifts are exercised
    processor = ViTPoseImageProcessor(size=SIZE, dataset=datasets)
    index = [5, 0, 1, 2, 3, 4]
    copies = BlockingCopies(monkeypatch)
    with copies:
        crops = processor(IMAGE, boxes=[[5, 5, 30, 40]] * 6, box_format="xywh", device="meta", dataset_index=index)
        with torch.no_grad():
            outputs = model(crops["pixel_values"], dataset_index=index)
            flipped = model(flip_pixel_values(crops["pixel_values"]), dataset_index=index)
        people = processor.post_process_pose_estimation(
            outputs, crop_metadata=crops, flip_outputs=flipped, dataset_index=index
        )[0]
    assert copies.found == []
    expected_k = [datasets[i]["num_keypoints"] for i in index]
    assert [p["keypoints"].shape[0] for p in people] == expected_k
    assert [p["dataset"] for p in people] == [datasets[i]["name"] for i in index]
    assert all(p["keypoints"].is_meta for p in people)


def test_pipeline_preprocess_and_forward_never_wait_for_the_device(monkeypatch):
    """The pipeline's own steps up to the decoded keypoints (``postprocess`` then copies only those to the host)."""
    pipe = PoseEstimationPipeline(
        model=ViTPoseForPoseEstimation(tiny_config()).eval(),
        image_processor=ViTPoseImageProcessor(size=SIZE),
        device="meta",
    )
    image = Image.fromarray(IMAGE)
    copies = BlockingCopies(monkeypatch)
    with copies:
        inputs = pipe.preprocess(_Images([image]), boxes=[[[5, 5, 30, 40], [1, 1, 20, 20]]])
        people = pipe._forward(inputs, flip_test=True)["people"]
    assert copies.found == []
    assert [p["keypoints"].is_meta for p in people[0]] == [True, True]


def test_device_outputs_are_still_checked_on_the_host():
    """Skipping the read-back of outputs.num_keypoints keeps the host-side channel check."""
    processor = ViTPoseImageProcessor(size=SIZE)
    crops = processor(IMAGE, boxes=[[5, 5, 30, 40]], box_format="xywh", device="meta")
    wrong = torch.zeros(1, 14, 16, 12, device="meta")  # 14 channels for COCO's 17 keypoints
    with pytest.raises(ValueError, match="14 channels but dataset 'coco' has 17 keypoints"):
        processor.post_process_pose_estimation(wrong, crop_metadata=crops)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_round_trip_on_cuda():
    """Host to device without blocking, device to host blocking: the values read back are complete."""
    x = torch.arange(100_000, dtype=torch.float32)
    on_gpu = to_device(x, "cuda")
    back = to_device(on_gpu * 2, "cpu")
    assert torch.equal(back, x * 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("plus", [False, True], ids=["dense", "plus-mixed"])
def test_cuda_crop_model_decode_makes_no_stream_sync(plus):
    """What the meta-device tests stand in for: CUDA's sync debug mode raises on any host-device synchronisation."""
    config = tiny_plus_config() if plus else tiny_config()
    model = ViTPoseForPoseEstimation(config).eval().cuda()
    datasets = list(model.config.datasets)
    processor = ViTPoseImageProcessor(size=SIZE, dataset=datasets if plus else "coco")
    index = [5, 0, 1, 2, 3, 4] if plus else 0
    boxes = [[5, 5, 30, 40]] * (6 if plus else 2)
    extra = {"dataset_index": index} if plus else {}
    image = torch.from_numpy(IMAGE).permute(2, 0, 1)  # on the host: its upload is part of the path
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        crops = processor(image, boxes=boxes, box_format="xywh", device="cuda", **extra)
        with torch.no_grad():
            outputs = model(crops["pixel_values"], dataset_index=index)
            flipped = model(flip_pixel_values(crops["pixel_values"]), dataset_index=index)
        people = processor.post_process_pose_estimation(
            outputs, crop_metadata=crops, flip_outputs=flipped, dataset_index=index
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(p["keypoints"].is_cuda for p in people[0])
    # wiring only: the same code on the CPU (its numerics are checked against OpenCV / official code elsewhere)
    model = model.cpu()
    host = processor(IMAGE, boxes=boxes, box_format="xywh", **extra)
    with torch.no_grad():
        outputs = model(host["pixel_values"], dataset_index=index)
        flipped = model(flip_pixel_values(host["pixel_values"]), dataset_index=index)
    reference = processor.post_process_pose_estimation(
        outputs, crop_metadata=host, flip_outputs=flipped, dataset_index=index
    )
    for got, want in zip(people[0], reference[0]):
        torch.testing.assert_close(got["keypoints"].cpu(), want["keypoints"], atol=1e-2, rtol=0)
