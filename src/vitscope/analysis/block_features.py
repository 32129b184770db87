"""Image-level features of every block (or a chosen list) of one or several models, one forward pass per image.

What the per-block downstream evaluations read (k-NN, retrieval): the block output (``hook_resid_post``,
walmer2023 reads the raw block output, no final norm) reduced to the CLS token (default) or the mean of the patch
tokens. Blocks where the CLS token does not exist yet (CLS entering at a later block, cls-register) are left out when
``blocks`` is None and are an error when asked for.

The functions live in :mod:`vitscope.features.access`; this module keeps their old import path.
"""
from __future__ import annotations

from vitscope.features.access import (TOKENS, collect_block_features, forward_block_features,  # noqa: F401
                                     parse_blocks, resolve_blocks)
