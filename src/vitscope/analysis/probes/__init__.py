"""Probes over stored features: linear and attentive probes (seed 000), batched tuning, per-token ridge probes
(seed 001), statistics across datasets. See ``docs/probes.md``."""
