"""Probes over stored features: linear and attentive probes (ciernik2025), batched tuning, per-token ridge probes
(vilas2023), statistics across datasets; end-to-end recipes from images (frozen backbone, fine-tuning).
See ``docs/probes.md``."""
from vitscope.analysis.probes.attentive import (AttentiveProbe, attention_over_inputs, default_heads, head_width,
                                                load_attentive_probe, pad_stack, save_attentive_probe)
from vitscope.analysis.probes.e2e import E2EConfig, train_e2e
from vitscope.analysis.probes.batched import AttentiveGrid, linear_logits, train_linear_grid
from vitscope.analysis.probes.inputs import (LAYER_SETS, ProbeInput, concat_inputs, l2_normalize, layer_set,
                                             load_inputs, parse_inputs, seed_order)
from vitscope.analysis.probes.linear import load_linear_head, save_linear_head
from vitscope.analysis.probes.ridge import (RidgeAccumulator, TokenProbeResult, TokenProbes, evaluate_token_probes,
                                            fit_token_probes, probe_rank_sum, ridge_fit, true_class_rank)
from vitscope.analysis.probes.metrics import balanced_topk_accuracy, probe_metrics, topk_accuracy
from vitscope.analysis.probes.stats import (benjamini_hochberg, gains, per_dataset_tests, results_rows,
                                            wilcoxon_over_datasets)
from vitscope.analysis.probes.train import (ProbeTrainConfig, TrainConfig, adjust_batch_size, class_weights,
                                            cosine_lr, grid, train_probe)
from vitscope.analysis.probes.tuning import ProbeFit, tune_attentive, tune_linear

__all__ = [
    "AttentiveProbe", "AttentiveGrid", "E2EConfig", "LAYER_SETS", "ProbeFit", "ProbeInput", "RidgeAccumulator",
    "ProbeTrainConfig", "TokenProbeResult", "TokenProbes", "TrainConfig", "adjust_batch_size", "evaluate_token_probes",
    "fit_token_probes", "probe_rank_sum", "ridge_fit", "true_class_rank",
    "attention_over_inputs", "balanced_topk_accuracy", "benjamini_hochberg", "class_weights", "concat_inputs",
    "cosine_lr", "default_heads", "gains", "grid", "head_width", "l2_normalize", "layer_set", "linear_logits",
    "load_attentive_probe", "load_inputs", "load_linear_head", "pad_stack", "parse_inputs", "per_dataset_tests",
    "probe_metrics", "results_rows", "save_attentive_probe", "save_linear_head", "seed_order", "topk_accuracy",
    "train_e2e", "train_linear_grid", "train_probe", "tune_attentive", "tune_linear", "wilcoxon_over_datasets",
]
