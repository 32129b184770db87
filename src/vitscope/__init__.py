"""vitscope: probe, measure and visualise Vision Transformers."""
from vitscope.data import open_dataset
from vitscope.data.decode import load_image
from vitscope import features
from vitscope.features import extract_features
from vitscope.hooks import ActivationCache, HookPoint
from vitscope.models import HookedViT, PreprocessConfig, TokenLayout, ViTConfig
from vitscope.models.loading import load_model, save_model
from vitscope.models.registry import list_models

__version__ = "0.1.0"

__all__ = ["ActivationCache", "HookPoint", "HookedViT", "PreprocessConfig", "TokenLayout", "ViTConfig",
           "__version__", "extract_features", "features", "list_models", "load_image", "load_model", "open_dataset", "save_model"]
