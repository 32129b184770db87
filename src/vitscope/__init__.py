"""vitscope: probe, measure and visualise Vision Transformers."""
from vitscope.data import open_dataset
from vitscope.data.decode import load_image
from vitscope.hooks import ActivationCache, HookPoint
from vitscope.models import HookedViT, PreprocessConfig, TokenLayout, ViTConfig

__version__ = "0.1.0"

__all__ = ["ActivationCache", "HookPoint", "HookedViT", "PreprocessConfig", "TokenLayout", "ViTConfig",
           "__version__", "load_image", "open_dataset"]
