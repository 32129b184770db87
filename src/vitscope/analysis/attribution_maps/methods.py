"""The attribution methods by name and family, and the one rule that turns a name or alias into a method."""
from __future__ import annotations

from vitscope.analysis.attention.relevance import METHODS as ATTENTION_METHODS
from vitscope.analysis.attention.relevance import METHOD_ALIASES as ATTENTION_ALIASES
from vitscope.analysis.attribution_maps.cam import CAM_ALIASES, CAM_METHODS

GRADIENT_METHODS = ("saliency", "input-x-gradient", "integrated-gradients", "smoothgrad", "smoothgrad-sq",
                    "vargrad")
PERTURBATION_METHODS = ("occlusion",)
#: every method of :func:`explain`, by family; ``random`` is a control (a seeded random map), not a method
METHODS = CAM_METHODS + GRADIENT_METHODS + PERTURBATION_METHODS + ATTENTION_METHODS + ("random",)
FAMILIES = {**{m: "cam" for m in CAM_METHODS}, **{m: "gradient" for m in GRADIENT_METHODS},
            "occlusion": "perturbation", **{m: "attention" for m in ATTENTION_METHODS}, "random": "control"}
METHOD_ALIASES = {**CAM_ALIASES, **ATTENTION_ALIASES, "ig": "integrated-gradients",
                  "integrated_gradients": "integrated-gradients", "input_x_gradient": "input-x-gradient",
                  "inputxgradient": "input-x-gradient", "gradient": "saliency", "smoothgrad_sq": "smoothgrad-sq",
                  "smoothgrad-squared": "smoothgrad-sq"}
#: methods whose map is computed on the token grid (upsampled to the image bilinearly)
TOKEN_METHODS = CAM_METHODS + ATTENTION_METHODS + ("random",)


def resolve_method(name: str) -> str:
    """A method name or alias -> its name in :data:`METHODS`; a clear error that lists them."""
    key = str(name).strip().lower()
    m = METHOD_ALIASES.get(key, key)
    m = METHOD_ALIASES.get(m.replace("_", "-"), m.replace("_", "-")) if m not in METHODS else m
    if m not in METHODS:
        import difflib

        close = difflib.get_close_matches(key, METHODS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}{hint}")
    return m
