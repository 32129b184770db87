"""Hook points, the activation cache and interventions built on them."""
from vitscope.hooks.hook_points import ActivationCache, HookedRootModule, HookPoint, make_filter

__all__ = ["ActivationCache", "HookedRootModule", "HookPoint", "make_filter"]
