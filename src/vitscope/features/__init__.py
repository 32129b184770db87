"""Feature extraction and the on-disk feature store.

>>> store = extract_features(model, dataset, "feats/vit_s16-imagenet-val", layers="all",
...                          sites="resid_post", tokens=("cls", "mean"))
>>> store = vitscope.features.open("feats/vit_s16-imagenet-val")
>>> x = store["resid_post", 11, "cls"]          # lazy np.memmap (N, D)
"""
from vitscope.features.extract import extract_features, summary_line
from vitscope.features.plan import REDUCTIONS, canonical_site, make_plan, parse_layers, reduce_tokens
from vitscope.features.store import (FeatureStore, IncompatibleStoreError, IncompleteStoreError, open_store,
                                     read_manifest)

open = open_store  # noqa: A001  (vitscope.features.open(DIR), like zarr.open)

__all__ = ["REDUCTIONS", "FeatureStore", "IncompatibleStoreError", "IncompleteStoreError", "canonical_site",
           "extract_features", "make_plan", "open", "open_store", "parse_layers", "read_manifest",
           "reduce_tokens", "summary_line"]
