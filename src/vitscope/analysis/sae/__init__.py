"""Sparse autoencoders on ViT activations: architectures, training from a feature store (many in one pass), metrics
with the SAE spliced into the model, features against the synthetic benchmark's generating factors, interventions,
a feature browser. See docs/sae.md."""
from vitscope.analysis.sae.io import load_sae, load_saelens, load_saev, save_sae
from vitscope.analysis.sae.models import ARCHS, SAE, SAEConfig
from vitscope.analysis.sae.train import TrainOptions, Trainer, train_saes

__all__ = ["ARCHS", "SAE", "SAEConfig", "TrainOptions", "Trainer", "load_sae", "load_saelens", "load_saev",
           "save_sae", "train_saes"]
from vitscope.analysis.sae.evaluation import SAEOptions, SAEStudyOptions, evaluate  # noqa: E402

__all__ += ["SAEOptions", "SAEStudyOptions", "evaluate"]
