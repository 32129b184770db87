"""Hook points, the activation cache and interventions built on them."""
from vitscope.hooks.hook_points import ActivationCache, HookedRootModule, HookPoint, make_filter
from vitscope.hooks.interventions import ablate_heads, attention_perturbation, drop_patches, kept_patches

__all__ = ["ActivationCache", "HookedRootModule", "HookPoint", "ablate_heads", "attention_perturbation",
           "drop_patches", "kept_patches", "make_filter"]
