"""Attribution maps for ViTs and a faithfulness benchmark that ranks them.

- :func:`explain` ``(model, images, target, method, **options)`` -> :class:`Explanation`: every method of
  :data:`METHODS` returns a map on the image grid (B, H, W) and on the token grid for a target class: the CAM family
  at any block (``cam.py``), gradients on the input (``gradients.py``), occlusion (``occlusion.py``), and the
  attention methods of :mod:`vitscope.analysis.attention` (rollout, grad-rollout, chefer2021-generic,
  chefer2021-lrp), called as they are;
- ``metrics.py``: deletion / insertion, ROAD, pointing game, energy-based pointing game, IoU, AUROC, Spearman;
- ``sanity.py``: Adebayo et al.'s cascading model-parameter randomisation;
- :func:`evaluate` (``bench.py``): every method x metric on a dataset with masks -> a tidy table and a ranking
  figure; :class:`ExplainOptions` holds every default.
"""
from vitscope.analysis.attribution_maps.bench import evaluate
from vitscope.analysis.attribution_maps.explain import (
    FAMILIES, METHODS, Explanation, explain, resolve_method,
)
from vitscope.analysis.attribution_maps.options import METRIC_GROUPS, ExplainOptions

__all__ = ["FAMILIES", "METHODS", "METRIC_GROUPS", "ExplainOptions", "Explanation", "evaluate", "explain",
           "resolve_method"]
