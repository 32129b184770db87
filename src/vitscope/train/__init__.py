"""Training recipes for small ViTs: from scratch, dynamic CLS / register placement (cls-register), distillation."""
from vitscope.train.config import TrainConfig
from vitscope.train.loop import evaluate, train

__all__ = ["TrainConfig", "evaluate", "train"]
