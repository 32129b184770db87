"""Causal interventions on the hooked ViT: activation patching, path patching, attribution patching, ablations and
head composition scores."""
