"""Attention analyses: maps, rollout, gradient relevance, attention distance, walmer2023 statistics,
saliency IoU, video heat maps, CLS / register maps, position-embedding similarity.

Each analysis has one entry point, ``evaluate(models, data, options) -> Result`` in its module (``maps``,
``relevance`` (rollout and the gradient methods), ``distance``, ``stats``, ``saliency``, ``token_pages``, ``posembed``,
``video``), with its options dataclass; the command line, studies, report and app call it (docs/api.md).

Pure functions take softmax patterns (B, H, T, T) from ``blocks.{i}.attn.hook_pattern`` with the
``TokenLayout`` of the same block; ``*_from_model`` / model-level helpers run the model. Definitions follow
the reference (walmer2023, probing-vits, cls-register, vit-explain, Chefer et al.); where the public code differs, both
rules are offered under names (see docs/attention.md).
"""
from vitscope.analysis.attention.common import AttentionPatterns
from vitscope.analysis.attention.distance import (
    MeanAttentionDistance, attention_distance, distance_matrix, mean_attention_distance, stream_patterns,
)
from vitscope.analysis.attention.maps import (
    attention_map, attention_maps_from_model, block_head_maps, collect_patterns, fuse_heads, mass_threshold,
    patterns_from_cache,
)
from vitscope.analysis.attention.posembed import patch_embedding_filters, position_similarity
from vitscope.analysis.attention.lrp import lrp_attention_relevance, transformer_attribution
from vitscope.analysis.attention.relevance import (
    METHODS, attention_with_gradients, chefer_relevance, gradient_rollout, relevance_from_model, resolve_method,
)
from vitscope.analysis.attention.rollout import Attribution, attention_rollout, rollout_from_model, rollout_map
from vitscope.analysis.attention.saliency import (
    SaliencyIoU, binarize_attention, iou, mask_to_token_grid, saliency_iou,
)
from vitscope.analysis.attention.stats import (
    AttentionStats, aligned_attention, attention_offset, attention_statistics, average_map, head_std,
    offset_heads, overlap_count, position_std, spatial_to_cls, spatial_to_token,
)
from vitscope.analysis.attention.tokens import resolve_query, token_names
from vitscope.analysis.attention.video import attention_video, read_frames, video_attention_maps, write_video

__all__ = [
    "AttentionPatterns",
    "Attribution", "METHODS", "average_map", "lrp_attention_relevance", "overlap_count", "patterns_from_cache",
    "resolve_method", "spatial_to_token", "transformer_attribution",
    "AttentionStats", "MeanAttentionDistance", "SaliencyIoU", "aligned_attention", "attention_distance",
    "attention_map", "attention_maps_from_model", "attention_offset", "attention_rollout", "attention_statistics",
    "attention_video", "attention_with_gradients", "binarize_attention", "block_head_maps", "chefer_relevance",
    "collect_patterns", "distance_matrix", "fuse_heads", "gradient_rollout", "head_std", "iou",
    "mask_to_token_grid", "mass_threshold", "mean_attention_distance", "offset_heads", "patch_embedding_filters",
    "position_similarity", "position_std", "read_frames", "relevance_from_model", "resolve_query", "rollout_from_model", "rollout_map",
    "saliency_iou", "spatial_to_cls", "stream_patterns", "token_names", "video_attention_maps", "write_video",
]
