"""The preprocessing a model's config carries: :mod:`vitscope.preprocess`, under the name it has always had here."""
from vitscope.preprocess import (CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD,
                                 PreprocessConfig, Preprocessor, preprocess, resize_crop, to_tensor)

__all__ = ["CLIP_MEAN", "CLIP_STD", "IMAGENET_MEAN", "IMAGENET_STD", "INCEPTION_MEAN", "INCEPTION_STD",
           "PreprocessConfig", "Preprocessor", "preprocess", "resize_crop", "to_tensor"]
