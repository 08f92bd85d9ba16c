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

from .configuration_vitpose_hf import ViTPoseConfig
from .image_processing_vitpose_hf import ViTPoseImageProcessor
from .inference.detection import ObjectDetector
from .inference.drawing import draw
from .inference.export import export
from .inference.pipeline import PoseEstimationPipeline, pipeline  # registers the "pose-estimation" task
from .keypoint_metadata import KEYPOINT_DATASETS, VITPOSE_PLUS_DATASETS, get_dataset_info, list_datasets
from .modeling_vitpose_hf import (
    ViTPoseEstimatorOutput,
    ViTPoseForPoseEstimation,
    ViTPoseModel,
    ViTPoseModelOutput,
    ViTPosePreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register(ViTPoseConfig.model_type, ViTPoseConfig, exist_ok=True)
AutoModel.register(ViTPoseConfig, ViTPoseModel, exist_ok=True)
AutoModelForPoseEstimation.register(ViTPoseConfig, ViTPoseForPoseEstimation, exist_ok=True)
AutoModelForKeypointDetection.register(ViTPoseConfig, ViTPoseForPoseEstimation, exist_ok=True)
try:  # transformers 5: one class per backend; ours is pure torch and serves both
    AutoImageProcessor.register(
        ViTPoseConfig,
        image_processor_classes={"pil": ViTPoseImageProcessor, "torchvision": ViTPoseImageProcessor},
        exist_ok=True,
    )
except TypeError:  # transformers 4
    AutoImageProcessor.register(ViTPoseConfig, slow_image_processor_class=ViTPoseImageProcessor, exist_ok=True)

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
]
