"""vitpose-hf: ViTPose and ViTPose++ for Hugging Face Transformers.

Importing the package registers the `vitpose_hf` model type with the transformers Auto classes.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForKeypointDetection,
    AutoModelForPoseEstimation,
)

from .configuration_vitpose_hf import ViTPoseBottomUpConfig, ViTPoseConfig
from .image_processing_vitpose_hf import ViTPoseImageProcessor
from .image_processing_vitpose_hf_bottom_up import ViTPoseBottomUpImageProcessor
from .inference.bottom_up import BottomUpPoseEstimator
from .inference.detection import ObjectDetector
from .inference.drawing import draw
from .inference.export import export
from .inference.formats import to_supervision
from .inference.pipeline import PoseEstimationPipeline, pipeline  # registers "keypoint-detection", "pose-estimation"
from .keypoint_metadata import KEYPOINT_DATASETS, VITPOSE_PLUS_DATASETS, get_dataset_info, list_datasets
from .modeling_vitpose_hf import (
    ViTPoseEstimatorOutput,
    ViTPoseForPoseEstimation,
    ViTPoseModel,
    ViTPoseModelOutput,
    ViTPosePreTrainedModel,
)
from .modeling_vitpose_hf_bottom_up import ViTPoseBottomUpOutput, ViTPoseForBottomUpPoseEstimation
from .video import PoseTracker, VideoPoseEstimator

__version__ = "0.1.0"

AutoConfig.register(ViTPoseConfig.model_type, ViTPoseConfig, exist_ok=True)
AutoConfig.register(ViTPoseBottomUpConfig.model_type, ViTPoseBottomUpConfig, exist_ok=True)
AutoModel.register(ViTPoseConfig, ViTPoseModel, exist_ok=True)
# no AutoModel for the bottom-up config: ViTPoseModel.config_class is ViTPoseConfig and transformers refuses the pair
for _config, _model, _processor in (
    (ViTPoseConfig, ViTPoseForPoseEstimation, ViTPoseImageProcessor),
    (ViTPoseBottomUpConfig, ViTPoseForBottomUpPoseEstimation, ViTPoseBottomUpImageProcessor),
):
    AutoModelForPoseEstimation.register(_config, _model, exist_ok=True)
    AutoModelForKeypointDetection.register(_config, _model, exist_ok=True)
    try:  # transformers 5: one class per backend; ours are pure torch and serve both
        AutoImageProcessor.register(
            _config, image_processor_classes={"pil": _processor, "torchvision": _processor}, exist_ok=True
        )
    except TypeError:  # transformers 4
        AutoImageProcessor.register(_config, slow_image_processor_class=_processor, exist_ok=True)
del _config, _model, _processor

__all__ = [
    "ViTPoseConfig",
    "ViTPoseModel",
    "ViTPoseForPoseEstimation",
    "ViTPosePreTrainedModel",
    "ViTPoseModelOutput",
    "ViTPoseEstimatorOutput",
    "ViTPoseImageProcessor",
    "PoseEstimationPipeline",
    "pipeline",
    "draw",
    "export",
    "ObjectDetector",
    "KEYPOINT_DATASETS",
    "VITPOSE_PLUS_DATASETS",
    "get_dataset_info",
    "list_datasets",
    "ViTPoseBottomUpConfig",
    "ViTPoseForBottomUpPoseEstimation",
    "ViTPoseBottomUpOutput",
    "ViTPoseBottomUpImageProcessor",
    "BottomUpPoseEstimator",
    "VideoPoseEstimator",
    "PoseTracker",
    "to_supervision",
]
