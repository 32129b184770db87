"""Representation similarity: CKA (full and minibatch), RSA, spectral clustering of layers, comparisons."""
from vitscope.analysis.similarity.cka import (
    as_features,
    center_gram,
    cka,
    cka_from_grams,
    cka_matrix,
    gram,
    gram_linear,
    gram_rbf,
    hsic,
    kornblith_sigma,
    linear_cka,
    median_sigma,
    minmax_scale_gram,
    rbf_cka,
)
from vitscope.analysis.similarity.minibatch import MinibatchCKA
from vitscope.analysis.similarity.rsa import (
    compare_rdms,
    mean_cosine_similarity,
    rdm,
    rsa,
    rsa_matrix,
    spectral_cluster_layers,
)

__all__ = [
    "MinibatchCKA", "as_features", "center_gram", "cka", "cka_from_grams", "cka_matrix", "compare_rdms", "gram",
    "gram_linear", "gram_rbf", "hsic", "kornblith_sigma", "linear_cka", "mean_cosine_similarity", "median_sigma", "minmax_scale_gram",
    "rbf_cka", "rdm", "rsa", "rsa_matrix", "spectral_cluster_layers",
]
