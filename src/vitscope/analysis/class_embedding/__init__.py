"""Class embedding space (seed 001): the logit lens over every block, token and branch, identifiability, change
rates, residual match, memories, perturbations and token-removal curves. See ``docs/class-embedding.md``."""
