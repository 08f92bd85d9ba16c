"""vitpose-hf: ViTPose and ViTPose++ for Hugging Face Transformers.

Importing the package registers the `vitpose_hf` model type with the transformers Auto classes.
"""

from transformers import AutoConfig, AutoModel, AutoModelForKeypointDetection, AutoModelForPoseEstimation

from .configuration_vitpose_hf import ViTPoseConfig
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

__all__ = [
    "ViTPoseConfig",
    "ViTPoseModel",
    "ViTPoseForPoseEstimation",
    "ViTPosePreTrainedModel",
    "ViTPoseModelOutput",
    "ViTPoseEstimatorOutput",
    "KEYPOINT_DATASETS",
    "VITPOSE_PLUS_DATASETS",
    "get_dataset_info",
    "list_datasets",
]
