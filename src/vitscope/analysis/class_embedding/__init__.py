"""Class embedding space (vilas2023): the logit lens over every block, token and branch, identifiability, change
rates, residual match, memories, perturbations and token-removal curves. See ``docs/class-embedding.md``."""
from vitscope.analysis.class_embedding.attribution import attribution_table, head_logit_attribution
from vitscope.analysis.class_embedding.importance import (chefer_importance, importance, importance_order,
                                                          probe_importance, random_orders, seed_gradient_importance)
from vitscope.analysis.class_embedding.removal import RemovalCurves, auc_seed, auc_trapezoid, removal_curves
from vitscope.analysis.class_embedding.embeddings import ClassEmbeddings, model_norm, resolve_class_embeddings
from vitscope.analysis.class_embedding.images import imagenet_s_dataset
from vitscope.analysis.class_embedding.memories import (
    MemoryAgreement, MemoryResult, class_value_agreement, class_value_rows, key_value_agreement, memory_agreement,
    memory_logits, random_classes, value_vectors,
)
from vitscope.analysis.class_embedding.metrics import (
    block_change_rate, branch_change_rate, class_context_rows, class_rank, class_token_masks, evolution_rows,
    identifiability, image_rate, permutation_test, rate_rows, residual_match, token_rate, wilcoxon_greater,
)
from vitscope.analysis.class_embedding.perturbation import (
    attention_perturbation_rows, last_block_ranks, token_drop_rows,
)
from vitscope.analysis.class_embedding.projection import (
    SITES, ClassProjection, LensResult, LogitLens, Record, logit_lens, resolve_projection,
)

__all__ = [
    "RemovalCurves", "attribution_table", "auc_seed", "auc_trapezoid", "chefer_importance", "head_logit_attribution",
    "importance", "importance_order", "probe_importance", "random_orders", "removal_curves",
    "seed_gradient_importance",
    "SITES", "ClassEmbeddings", "ClassProjection", "LensResult", "LogitLens", "MemoryAgreement", "MemoryResult",
    "Record",
    "attention_perturbation_rows", "block_change_rate", "branch_change_rate", "class_context_rows", "class_rank",
    "class_token_masks", "class_value_agreement", "class_value_rows", "evolution_rows", "identifiability",
    "image_rate", "imagenet_s_dataset", "key_value_agreement", "last_block_ranks", "logit_lens", "memory_agreement",
    "memory_logits", "model_norm", "permutation_test", "random_classes", "rate_rows", "resolve_class_embeddings",
    "resolve_projection", "residual_match", "token_drop_rows",
    "token_rate", "value_vectors", "wilcoxon_greater",
]
