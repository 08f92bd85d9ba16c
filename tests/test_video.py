"""Video: tracking on a synthetic video made from the shared COCO photos, smoothing against independent formulas,
frame sources and their bad inputs.

The synthetic video pastes three real COCO people (with their ground-truth keypoints) onto a canvas and moves them:
A walks right, B walks left and crosses A, C stands still, leaves for longer than the tracker's max age and comes
back. An oracle pose step returns a person's exact ground-truth keypoints for any box that overlaps them, so the
tests check the tracking, detector-cadence and smoothing logic, not a model.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import PIL.Image
import pytest
import torch

from vitpose_hf.inference.pipeline import PoseEstimationPipeline
from vitpose_hf.keypoint_metadata import get_dataset_info
from vitpose_hf.video import (
    OneEuroFilter,
    OneEuroSmoother,
    PoseTracker,
    VideoPoseEstimator,
    VideoSourceError,
    box_iou,
    keypoint_box,
    open_source,
    savgol_smooth,
)
from vitpose_hf.video.sources import FolderSource

from helpers import tiny_config

COCO_NAMES = get_dataset_info("coco")["keypoint_names"]
CANVAS_W, CANVAS_H = 360, 200
FRAMES = 42
MAX_AGE = 10
SPRITE_H = 90
# (annotation id, top y, x at frame 0, x step per frame, frames present)
PEOPLE = {
    "A": (442619, 20, 10, 6.0, range(FRAMES)),
    "B": (460541, 80, 300, -6.0, range(FRAMES)),
    "C": (437295, 105, 150, 1.0, [*range(0, 12), *range(30, FRAMES)]),  # away for 18 frames > MAX_AGE
}


# ----------------------------------------------------------------------------------------------------------------
# the synthetic video
# ----------------------------------------------------------------------------------------------------------------
class SyntheticVideo:
    """Frames, per-frame ground truth (xyxy box, (17, 2) keypoints, (17,) visibility) and a frame lookup by pixels."""

    def __init__(self, shared_data):
        coco_dir = shared_data / "mmpose" / "coco"
        gt = json.loads((coco_dir / "test_coco.json").read_text())
        files = {im["id"]: im["file_name"] for im in gt["images"]}
        anns = {a["id"]: a for a in gt["annotations"]}
        sprites = {}
        for name, (ann_id, *_rest) in PEOPLE.items():
            ann = anns[ann_id]
            x, y, w, h = ann["bbox"]
            photo = PIL.Image.open(coco_dir / files[ann["image_id"]]).convert("RGB")
            scale = SPRITE_H / h
            size = (max(1, round(w * scale)), SPRITE_H)
            crop = photo.crop((round(x), round(y), round(x + w), round(y + h))).resize(size, PIL.Image.BILINEAR)
            kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
            local = (kps[:, :2] - [round(x), round(y)]) * [
                size[0] / (round(x + w) - round(x)),
                SPRITE_H / (round(y + h) - round(y)),
            ]
            sprites[name] = (crop, local, kps[:, 2] > 0)
        self.frames, self.truth, self.by_hash = [], [], {}
        for t in range(FRAMES):
            canvas = PIL.Image.new("RGB", (CANVAS_W, CANVAS_H), (90, 110, 100))
            truth = {}
            for name, (_, top, x0, step, present) in PEOPLE.items():
                if t not in present:
                    continue
                crop, local, visible = sprites[name]
                left = round(x0 + step * t)
                canvas.paste(crop, (left, top))
                box = np.array([left, top, left + crop.width, top + crop.height], dtype=np.float64)
                truth[name] = (box, local + [left, top], visible)
            array = np.asarray(canvas).copy()
            self.frames.append(array)
            self.truth.append(truth)
            self.by_hash[hashlib.sha1(array.tobytes()).hexdigest()] = t

    def frame_of(self, image) -> int:
        return self.by_hash[hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()]

    def boxes(self, t):
        return [self.truth[t][name][0] for name in sorted(self.truth[t])]


@pytest.fixture(scope="module")
def video(shared_data):
    return SyntheticVideo(shared_data)


def oracle_pose(video: SyntheticVideo, jitter: float = 0.0):
    """A perfect pose step with the pipeline's call interface: for each box, the exact keypoints of the person it
    covers most (at least half of its labelled keypoints inside the box), scored 0.9 where labelled and 0
    elsewhere; no such person: every score 0."""

    def pose(images, boxes, box_format, box_scores=None):
        assert box_format == "xyxy"
        out = []
        for i, (image, frame_boxes) in enumerate(zip(images, boxes)):
            t = video.frame_of(image)
            truth = video.truth[t]
            people = []
            for j, box in enumerate(np.asarray(frame_boxes, dtype=np.float64).reshape(-1, 4)):
                # the person with the largest share of labelled keypoints inside the box (at least half)
                inside = {}
                for n, (_, pts, vis) in truth.items():
                    pts = pts[vis]
                    within = (
                        (pts[:, 0] >= box[0]) & (pts[:, 0] <= box[2]) & (pts[:, 1] >= box[1]) & (pts[:, 1] <= box[3])
                    )
                    inside[n] = within.mean()
                name = max(inside, key=inside.get) if inside else None
                if name is not None and inside[name] >= 0.5:
                    _, xy, visible = truth[name]
                    if jitter:
                        rng = np.random.default_rng(t * 31 + ord(name))
                        xy = xy + rng.normal(0, jitter, xy.shape)
                    scores = np.where(visible, 0.9, 0.0)
                else:
                    xy, scores = np.tile((box[:2] + box[2:]) / 2, (17, 1)), np.zeros(17)
                people.append(
                    {
                        "box": [float(v) for v in box],
                        "box_format": "xyxy",
                        "box_score": None if box_scores is None else box_scores[i][j],
                        "label": "person",
                        "dataset": "coco",
                        "keypoints": [
                            {"name": n, "x": float(x), "y": float(y), "score": float(s)}
                            for n, (x, y), s in zip(COCO_NAMES, xy, scores)
                        ],
                    }
                )
            out.append(people)
        return out

    return pose


def stand_in_detector(video: SyntheticVideo, calls: list):
    """A detector with the documented callable interface: the ground-truth boxes of the frame it is shown."""

    def detect(images):
        found = []
        for image in images:
            t = video.frame_of(image)
            calls.append(t)
            found.append([{"box": [float(v) for v in b], "score": 0.99, "label": "person"} for b in video.boxes(t)])
        return found

    return detect


def identities(video: SyntheticVideo, results) -> dict[str, list[tuple[int, int]]]:
    """(frame, track id) of each ground-truth person, matching output people by their keypoints (oracle: exact)."""
    seen: dict[str, list[tuple[int, int]]] = {name: [] for name in PEOPLE}
    for result in results:
        truth = video.truth[result.index]
        for person in result.people:
            xy = np.array([[k["x"], k["y"]] for k in person["keypoints"]])
            dist = {n: np.abs(xy - truth[n][1])[truth[n][2]].mean() for n in truth}
            name = min(dist, key=dist.get)
            assert dist[name] < 1.0, f"frame {result.index}: a person matches no ground truth ({dist})"
            seen[name].append((result.index, person["track_id"]))
    return seen


def check_tracks(video, results):
    seen = identities(video, results)
    for name, (_, _, _, _, present) in PEOPLE.items():
        assert [t for t, _ in seen[name]] == list(present), f"{name} is missed on some frames"
    ids = {name: [i for _, i in pairs] for name, pairs in seen.items()}
    switches = sum(int(a != b) for name in ("A", "B") for a, b in zip(ids[name], ids[name][1:]))
    assert switches == 0
    before = {i for t, i in seen["C"] if t < 12}
    after = {i for t, i in seen["C"] if t >= 30}
    assert len(before) == 1 and len(after) == 1  # no switch inside either visit
    assert before != after  # away longer than max_age: a new id
    all_ids = [ids["A"][0], ids["B"][0], *before, *after]
    assert len(set(all_ids)) == 4  # never reused
    return seen


# ----------------------------------------------------------------------------------------------------------------
# tracking
# ----------------------------------------------------------------------------------------------------------------
def test_synthetic_video_really_has_crossings(video):
    overlaps = [box_iou(t["A"][0][None], t["B"][0][None])[0, 0] for t in video.truth]
    assert max(overlaps) > 0.1  # A and B overlap while crossing
    order = [t["A"][0][0] < t["B"][0][0] for t in video.truth]
    assert order[0] and not order[-1]  # they swap sides


@pytest.mark.parametrize("metric", ["iou", "oks"])
def test_tracking_with_ground_truth_boxes(video, metric):
    estimator = VideoPoseEstimator(
        oracle_pose(video), tracker=PoseTracker(metric, threshold=0.3, max_age=MAX_AGE), batch_size=8
    )
    results = estimator(video.frames, boxes=[video.boxes(t) for t in range(FRAMES)])
    assert [r.index for r in results] == list(range(FRAMES))
    assert all(r.detected for r in results)
    check_tracks(video, results)


def test_tracking_with_detector_every_third_frame(video):
    calls: list[int] = []
    estimator = VideoPoseEstimator(
        oracle_pose(video),
        detector=stand_in_detector(video, calls),
        detect_every=3,
        tracker=PoseTracker("iou", threshold=0.3, max_age=MAX_AGE),
        batch_size=6,
    )
    results = estimator(video.frames)
    assert sorted(calls) == list(range(0, FRAMES, 3))  # the detector saw only every third frame
    assert [r.detected for r in results] == [t % 3 == 0 for t in range(FRAMES)]
    check_tracks(video, results)
    # in-between boxes come from the previous frame's confident keypoints, padded (recomputed here)
    for result in results:
        if result.detected:
            continue
        previous = results[result.index - 1]
        expected = []
        for person in previous.people:
            xy = np.array([[k["x"], k["y"]] for k in person["keypoints"]])
            s = np.array([k["score"] for k in person["keypoints"]])
            keep = xy[s >= 0.3]
            if len(keep) < 3:
                continue
            c, half = (keep.min(0) + keep.max(0)) / 2, (keep.max(0) - keep.min(0)) * 1.25 / 2
            x1, y1 = np.maximum(c - half, 0)
            x2, y2 = np.minimum(c + half, [CANVAS_W, CANVAS_H])
            expected.append([x1, y1, x2, y2])
        got = [p["box"] for p in result.people]
        # people lost on this frame (C walking out) drop out of `got`; the rest keep their order
        assert all(any(np.allclose(g, e) for e in expected) for g in got)
    # crops of several frames share a pose call: fewer calls than frames
    assert estimator.stats["pose_calls"] < FRAMES / 2


def test_tracker_keeps_a_lost_track_for_max_age():
    tracker = PoseTracker("iou", threshold=0.5, max_age=3)
    person = {"box": [10, 10, 50, 80], "box_format": "xywh", "keypoints": [{"name": "nose", "x": 30, "y": 20}]}
    first = tracker.update([dict(person)], 0)
    assert tracker.update([], 1) == []
    assert tracker.update([dict(person)], 4) == first  # missed frames 1-3 (= max_age): same id
    assert tracker.update([dict(person)], 9) == [2]  # missed frames 5-8 (4 > max_age): a new id
    tracker.reset()
    assert tracker.update([dict(person)], 0) == [3]  # ids are never reused, not even after a reset
    with pytest.raises(ValueError, match="must increase"):
        tracker.update([], 0)


def test_keypoint_box_against_formula():
    xy = np.array([[10.0, 20.0], [30.0, 60.0], [500.0, 500.0]])
    scores = np.array([0.9, 0.8, 0.1])
    box = keypoint_box(xy, scores, 0.3, 1.5, 640, 480, 2)
    assert box == pytest.approx([5.0, 10.0, 35.0, 70.0])  # centre (20, 40), size 20x40 grown to 30x60
    assert keypoint_box(xy, scores, 0.3, 1.5, 640, 480, 3) is None


# ----------------------------------------------------------------------------------------------------------------
# smoothing
# ----------------------------------------------------------------------------------------------------------------
def one_euro_reference(samples, times, min_cutoff, beta, d_cutoff):
    """The one-euro filter of Casiez et al. (2012), written from the paper for one scalar signal."""

    def alpha(rate, cutoff):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau * rate)

    out = [samples[0]]
    x_hat, dx_hat = samples[0], 0.0
    for i in range(1, len(samples)):
        rate = 1.0 / (times[i] - times[i - 1])
        dx = (samples[i] - x_hat) * rate
        dx_hat = alpha(rate, d_cutoff) * dx + (1 - alpha(rate, d_cutoff)) * dx_hat
        cutoff = min_cutoff + beta * abs(dx_hat)
        x_hat = alpha(rate, cutoff) * samples[i] + (1 - alpha(rate, cutoff)) * x_hat
        out.append(x_hat)
    return np.array(out)


def test_one_euro_matches_the_paper_formula():
    rng = np.random.default_rng(0)
    times = np.cumsum(rng.uniform(0.02, 0.05, 80))  # irregular frame times
    signal = np.stack([np.sin(3 * times) * 50 + rng.normal(0, 2, 80), np.cumsum(rng.normal(0, 3, 80))], 1)
    filt = OneEuroFilter(min_cutoff=1.3, beta=0.02, d_cutoff=0.8)
    ours = np.stack([filt(signal[i], times[i]) for i in range(80)])
    for c in range(2):
        np.testing.assert_allclose(ours[:, c], one_euro_reference(signal[:, c], times, 1.3, 0.02, 0.8), rtol=1e-12)


def walking_skeleton(shared_data, frames=150, fps=30.0):
    """A real COCO skeleton moving along a smooth path (clean), and a copy with 3-pixel Gaussian jitter."""
    gt = json.loads((shared_data / "mmpose" / "coco" / "test_coco.json").read_text())
    ann = next(a for a in gt["annotations"] if a["id"] == 442619)
    kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)[:, :2]
    t = np.arange(frames) / fps
    path = np.stack([30 * t + 10 * np.sin(2 * np.pi * 0.3 * t), 8 * np.cos(2 * np.pi * 0.25 * t)], 1)
    clean = kps[None] + path[:, None]
    noisy = clean + np.random.default_rng(1).normal(0, 3.0, clean.shape)
    return t, clean, noisy


def error_and_lag(smoothed, clean, skip=15, max_lag=8):
    errors = [
        np.linalg.norm(smoothed[skip + s :] - clean[skip : len(clean) - s], axis=-1).mean() for s in range(max_lag)
    ]
    return float(np.linalg.norm(smoothed[skip:] - clean[skip:], axis=-1).mean()), int(np.argmin(errors))


def test_one_euro_lowers_jitter_with_bounded_lag(shared_data):
    t, clean, noisy = walking_skeleton(shared_data)
    smoother = OneEuroSmoother(min_cutoff=0.5, beta=0.05, d_cutoff=1.0)
    smoothed = np.stack([smoother.smooth(1, noisy[i], np.ones(17), t[i]) for i in range(len(t))])
    raw_error, _ = error_and_lag(noisy, clean)
    error, lag = error_and_lag(smoothed, clean)
    assert error < raw_error / 1.4  # stated factor: at least 1.4x lower mean error
    assert lag <= 2  # frames


def test_savgol_matches_scipy_and_lowers_jitter(shared_data):
    signal = pytest.importorskip("scipy.signal")
    t, clean, noisy = walking_skeleton(shared_data)
    smoothed, covered = savgol_smooth(noisy, window=15, order=2)
    assert covered.all()
    np.testing.assert_allclose(smoothed, signal.savgol_filter(noisy, 15, 2, axis=0, mode="interp"), atol=1e-9)
    raw_error, _ = error_and_lag(noisy, clean)
    error, lag = error_and_lag(smoothed, clean)
    assert error < raw_error / 2.0  # stated factor: at least 2x lower mean error
    assert lag == 0  # centred


def test_low_score_keypoints_do_not_drag_the_track(shared_data):
    t, clean, noisy = walking_skeleton(shared_data)
    rng = np.random.default_rng(2)
    outliers = rng.random(noisy.shape[:2]) < 0.15
    scores = np.where(outliers, 0.05, 0.9)
    corrupted = noisy + outliers[..., None] * 60.0  # a wrong, low-scored keypoint: 60 px off
    # one-euro: with the scores it stays near the clean path; treating every keypoint as confident it does not
    guarded, naive = OneEuroSmoother(0.5, 0.05), OneEuroSmoother(0.5, 0.05, score_threshold=0.0)
    a = np.stack([guarded.smooth(1, corrupted[i], scores[i], t[i]) for i in range(len(t))])
    b = np.stack([naive.smooth(1, corrupted[i], scores[i], t[i]) for i in range(len(t))])
    assert error_and_lag(a, clean)[0] < 4.0 < error_and_lag(b, clean)[0]
    # savgol: low-score samples are interpolated over, so the result matches the run without the outliers
    s, covered = savgol_smooth(corrupted, valid=(scores >= 0.3)[..., None], window=15, order=2, max_gap=5)
    assert error_and_lag(s, clean)[0] < 2.5


def test_savgol_fills_short_gaps_and_splits_at_long_ones():
    values = np.arange(30, dtype=np.float64) * 2.0 + 1.0  # a line: any polynomial fit returns it exactly
    valid = np.ones(30, dtype=bool)
    valid[5:8] = False  # 3 frames: filled
    valid[15:25] = False  # 10 frames: too long
    values[~valid] = 999.0
    out, covered = savgol_smooth(values, valid, window=5, order=2, max_gap=4)
    np.testing.assert_allclose(out[covered], (np.arange(30) * 2.0 + 1.0)[covered])
    assert covered[5:8].all() and not covered[15:25].any()
    assert (out[15:25] == 999.0).all()  # untrusted samples outside a short gap are left as they were


def test_estimator_savgol_on_jittered_video(video):
    boxes = [video.boxes(t) for t in range(FRAMES)]
    raw = VideoPoseEstimator(oracle_pose(video, jitter=2.0), tracker=PoseTracker("iou", max_age=MAX_AGE))
    smooth = VideoPoseEstimator(
        oracle_pose(video, jitter=2.0),
        tracker=PoseTracker("iou", max_age=MAX_AGE),
        smooth="savgol",
        smooth_options={"window": 7, "order": 1},
    )

    def error(results):
        errs = []
        for r in results:
            for p in r.people:
                xy = np.array([[k["x"], k["y"]] for k in p["keypoints"]])
                truth = video.truth[r.index]
                name = min(truth, key=lambda n: np.abs(xy - truth[n][1])[truth[n][2]].mean())
                errs.append(np.linalg.norm(xy - truth[name][1], axis=1)[truth[name][2]].mean())
        return float(np.mean(errs))

    assert error(smooth(video.frames, boxes=boxes)) < error(raw(video.frames, boxes=boxes)) / 1.5


def test_savgol_fills_a_track_missed_on_two_frames(video):
    boxes = [video.boxes(t) for t in range(FRAMES)]
    for t in (20, 21):  # A is not detected on frames 20 and 21
        boxes[t] = [video.truth[t][n][0] for n in sorted(video.truth[t]) if n != "A"]

    def run(**smoothing):
        estimator = VideoPoseEstimator(oracle_pose(video), tracker=PoseTracker("iou", max_age=MAX_AGE), **smoothing)
        return estimator(video.frames, boxes=boxes)

    plain = identities(video, run())
    assert [t for t, _ in plain["A"]] == [t for t in range(FRAMES) if t not in (20, 21)]
    results = run(smooth="savgol", smooth_options={"window": 7, "order": 2, "max_gap": 3})
    filled = identities(video, results)
    assert [t for t, _ in filled["A"]] == list(range(FRAMES))  # the gap is filled ...
    assert len({i for _, i in filled["A"]}) == 1  # ... on the same track
    for t in (20, 21):
        (person,) = [p for p in results[t].people if p.get("interpolated")]
        xy = np.array([[k["x"], k["y"]] for k in person["keypoints"]])
        _, truth, visible = video.truth[t]["A"]
        assert np.abs(xy - truth)[visible].max() < 0.5  # A walks in a straight line: the fill is on it
        assert person["box"] == pytest.approx(video.truth[t]["A"][0], abs=0.5)


# ----------------------------------------------------------------------------------------------------------------
# the real pipeline (wiring)
# ----------------------------------------------------------------------------------------------------------------
def test_wiring_real_tiny_model_through_the_pipeline(video):
    torch.manual_seed(0)
    from vitpose_hf import ViTPoseForPoseEstimation

    pipe = PoseEstimationPipeline(ViTPoseForPoseEstimation(tiny_config()).eval(), device="cpu")
    calls: list[int] = []
    estimator = VideoPoseEstimator(
        pipe,
        detector=stand_in_detector(video, calls),
        batch_size=16,
        smooth="one-euro",
        keypoint_threshold=0.0,
        pose_kwargs={"flip_test": True, "dataset": "coco"},
    )
    results = estimator(video.frames[:9])
    assert [r.index for r in results] == list(range(9))
    assert [len(r.people) for r in results] == [len(video.truth[t]) for t in range(9)]
    assert all(isinstance(p["track_id"], int) and len(p["keypoints"]) == 17 for r in results for p in r.people)
    assert estimator.stats["pose_calls"] < 9  # frames batched


# ----------------------------------------------------------------------------------------------------------------
# sources and bad input
# ----------------------------------------------------------------------------------------------------------------
def test_folder_source_counts_an_unreadable_frame(video, tmp_path):
    for t in range(5):
        PIL.Image.fromarray(video.frames[t]).save(tmp_path / f"f{t:03d}.png")
    (tmp_path / "f002.png").write_bytes(b"not a png")
    source = open_source(tmp_path, fps=10)
    assert isinstance(source, FolderSource) and source.total == 5
    estimator = VideoPoseEstimator(oracle_pose(video), detector=stand_in_detector(video, []))
    results = estimator(source)
    assert [r.index for r in results] == [0, 1, 3, 4]
    assert [r.time for r in results] == pytest.approx([0.0, 0.1, 0.3, 0.4])
    assert source.skipped == 1 and "f002.png" in source.skip_reasons[0]


def test_iterator_source_counts_none_frames_and_names_bad_items(video):
    source = open_source([video.frames[0], None, video.frames[2]])
    assert [f.index for f in source] == [0, 2] and source.skipped == 1
    with pytest.raises(TypeError, match="frame 1"):
        list(open_source([video.frames[0], 3.5]))


def test_video_that_cannot_be_opened(tmp_path):
    pytest.importorskip("cv2")
    fake = tmp_path / "clip.mp4"
    fake.write_text("this is not a video")
    with pytest.raises(VideoSourceError, match="clip.mp4"):
        open_source(fake)
    with pytest.raises(VideoSourceError, match="no such video file or folder"):
        open_source(tmp_path / "missing.mp4")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(VideoSourceError, match="holds no frames"):
        open_source(empty)


def test_video_file_source_reads_every_frame(video, tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 12, (CANVAS_W, CANVAS_H))
    for t in range(6):
        writer.write(cv2.cvtColor(video.frames[t], cv2.COLOR_RGB2BGR))
    writer.release()
    source = open_source(path, stride=2)
    frames = list(source)
    assert [f.index for f in frames] == [0, 2, 4] and source.fps == pytest.approx(6.0)
    assert [f.time for f in frames] == pytest.approx([0.0, 2 / 12, 4 / 12])
    assert np.abs(frames[1].image.astype(int) - video.frames[2]).mean() < 8  # JPEG-compressed copy of frame 2


def test_video_file_source_counts_a_frame_the_decoder_rejects(video, tmp_path, monkeypatch):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (CANVAS_W, CANVAS_H))
    for t in range(5):
        writer.write(cv2.cvtColor(video.frames[t], cv2.COLOR_RGB2BGR))
    writer.release()
    real = cv2.VideoCapture

    class RejectsFrame2:  # OpenCV's capture, except that decoding frame 2 fails (as for a broken packet)
        def __init__(self, name):
            self.capture, self.grabbed = real(name), -1

        def grab(self):
            self.grabbed += 1
            return self.capture.grab()

        def retrieve(self):
            ok, frame = self.capture.retrieve()
            return (False, None) if self.grabbed == 2 else (ok, frame)

        def __getattr__(self, name):
            return getattr(self.capture, name)

    monkeypatch.setattr(cv2, "VideoCapture", RejectsFrame2)
    source = open_source(path)
    assert [f.index for f in source] == [0, 1, 3, 4]
    assert source.skipped == 1 and source.skip_reasons == ["frame 2 cannot be decoded"]


def test_camera_index_source(video, monkeypatch):
    cv2 = pytest.importorskip("cv2")
    bgr = [cv2.cvtColor(f, cv2.COLOR_RGB2BGR) for f in video.frames[:3]]

    class FakeCamera:  # OpenCV's capture interface for device 0: three frames, then the camera stops
        def __init__(self, index):
            self.index, self.left = index, list(bgr)

        def isOpened(self):  # noqa: N802 - OpenCV's name
            return self.index == 0

        def get(self, prop):
            return 15.0 if prop == cv2.CAP_PROP_FPS else 0.0

        def read(self):
            return (True, self.left.pop(0)) if self.left else (False, None)

        def release(self):
            pass

    monkeypatch.setattr(cv2, "VideoCapture", FakeCamera)
    source = open_source(0)
    frames = list(source)
    assert source.name == "camera 0" and source.fps == 15.0 and source.total is None
    assert [f.index for f in frames] == [0, 1, 2] and [f.time for f in frames] == pytest.approx([0, 1 / 15, 2 / 15])
    np.testing.assert_array_equal(frames[1].image, video.frames[1])
    with pytest.raises(VideoSourceError, match="camera 3"):
        open_source(3)


def test_bad_estimator_inputs(video):
    with pytest.raises(ValueError, match="needs a detector"):
        VideoPoseEstimator(oracle_pose(video))(video.frames[:2])
    with pytest.raises(ValueError, match="detect_every"):
        VideoPoseEstimator(oracle_pose(video), detect_every=0)
    with pytest.raises(ValueError, match="smooth"):
        VideoPoseEstimator(oracle_pose(video), smooth="kalman")
    with pytest.raises(ValueError, match="pass a tracker"):
        VideoPoseEstimator(oracle_pose(video), tracker=None, smooth="one-euro")
    with pytest.raises(ValueError, match="pose_kwargs may not set"):
        VideoPoseEstimator(oracle_pose(video), pose_kwargs={"boxes": []})
    with pytest.raises(ValueError, match="frame 0"):
        VideoPoseEstimator(oracle_pose(video))(video.frames[:1], boxes=[[[10, 10, 5, 50]]])  # x2 < x1


def test_boxes_that_converge_on_one_person_give_one_pose(video):
    def twice(images):  # a detector that finds A twice, with slightly different boxes
        return [
            [{"box": [b[0] + d, b[1], b[2] + d, b[3]], "label": "person"} for d in (0, 3)]
            for b in [video.truth[video.frame_of(im)]["A"][0] for im in images]
        ]

    results = VideoPoseEstimator(oracle_pose(video), detector=twice, detect_every=2)(video.frames[:2])
    assert len(results[0].people) == 2  # detector frame: as detected
    assert len(results[1].people) == 1  # from the keypoints: the same person once


def test_no_people_is_a_valid_empty_result(video):
    estimator = VideoPoseEstimator(oracle_pose(video), detector=lambda images: [[] for _ in images], detect_every=2)
    results = estimator(video.frames[:4])
    assert [r.people for r in results] == [[], [], [], []]
