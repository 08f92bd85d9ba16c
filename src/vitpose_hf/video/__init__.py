"""Video: frame sources, tracking, smoothing, the ``VideoPoseEstimator`` and its writers."""

from vitpose_hf.video.estimator import FrameResult, VideoPoseEstimator
from vitpose_hf.video.smoothing import OneEuroFilter, OneEuroSmoother, savgol_smooth
from vitpose_hf.video.sources import FrameSource, VideoSourceError, open_source
from vitpose_hf.video.tracking import PoseTracker, box_iou, keypoint_box, keypoint_oks

__all__ = [
    "FrameResult",
    "FrameSource",
    "OneEuroFilter",
    "OneEuroSmoother",
    "PoseTracker",
    "VideoPoseEstimator",
    "VideoSourceError",
    "box_iou",
    "keypoint_box",
    "keypoint_oks",
    "open_source",
    "savgol_smooth",
]
