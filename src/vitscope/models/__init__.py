"""The hooked ViT, its config, token layout and preprocessing."""
from vitscope.models.config import ConfigError, ViTConfig
from vitscope.models.layout import TokenLayout, token_layout
from vitscope.models.preprocess import PreprocessConfig, Preprocessor, preprocess
from vitscope.models.vit import HookedViT

__all__ = ["ConfigError", "HookedViT", "PreprocessConfig", "Preprocessor", "TokenLayout", "ViTConfig",
           "preprocess", "token_layout"]
