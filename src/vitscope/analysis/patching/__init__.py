"""Causal interventions on the hooked ViT, per block, position and head.

* :func:`evaluate` / :class:`PatchOptions`: activation patching (denoising or noising; ``resid_pre`` /
  ``attn_out`` / ``mlp_out`` per block x position, ``z`` / ``result`` per block x head, ``pattern`` per block x head x
  query), attribution patching and their agreement, path patching (``receivers``);
* :mod:`~vitscope.analysis.patching.ablation`: zero / mean / resample ablation of heads and MLPs over a dataset,
  iterative head pruning (``vitscope ablate``);
* :mod:`~vitscope.analysis.patching.composition`: Q-, K-, V-composition scores between heads;
* the building blocks: :func:`activation_patching`, :func:`attribution_patching`, :func:`path_patching`,
  :func:`make_pairs` / :func:`synthetic_pairs` (clean / corrupted inputs, the built-in corruptions).
"""
from vitscope.analysis.patching.activation import PatchGrid, activation_patching, patch_cells
from vitscope.analysis.patching.attribution import agreement, attribution_patching
from vitscope.analysis.patching.evaluation import PatchOptions, draw_grid, evaluate
from vitscope.analysis.patching.pairs import PatchPairs, load_pair, make_pairs, synthetic_pairs
from vitscope.analysis.patching.path import path_patching

__all__ = ["PatchGrid", "PatchOptions", "PatchPairs", "activation_patching", "agreement", "attribution_patching",
           "draw_grid", "evaluate", "load_pair", "make_pairs", "patch_cells", "path_patching", "synthetic_pairs"]
