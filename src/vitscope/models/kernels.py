"""Linear layers of the blocks: ``F.linear`` or, for CPU inference, oneDNN with the bias and GELU fused.

PyTorch's CPU ``F.linear`` runs the BLAS GEMM after copying the bias into the output, and GELU then reads
and writes the (B, T, 4D) hidden state once more. oneDNN (``torch.ops.mkldnn._linear_pointwise``, the
kernel that ``torch.compile`` itself emits for CPU linear + activation) adds the bias and applies GELU
inside the GEMM. On the development CPU this makes a ViT-S/16 forward about 1.25x faster
(``benchmarks/forward.py``, docs/benchmarks-forward.md); results agree with ``F.linear`` to float32
rounding (tested to 1e-5).

``impl`` (per model: ``HookedViT.set_linear_impl``):

- ``"auto"`` (default): oneDNN when the input is a float32 CPU tensor, autograd is off (``no_grad`` or
  ``inference_mode``; the oneDNN op has no backward), CPU autocast is off (it would not cast the oneDNN op),
  not inside ``torch.compile`` (which fuses on its own),
  ``torch.backends.mkldnn`` is enabled and the op exists in this PyTorch build; ``F.linear`` otherwise;
- ``"torch"``: always ``F.linear`` followed by the activation;
- ``"onednn"``: oneDNN where it is usable and an error where it is not.
"""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

IMPLS = ("auto", "torch", "onednn")


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTS = {
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "quick_gelu": quick_gelu,
    "silu": F.silu,
}
# activation -> (oneDNN post-op, its algorithm); quick_gelu has no oneDNN post-op and runs after the GEMM
_ONEDNN_ACTS = {None: ("none", ""), "gelu": ("gelu", "none"), "gelu_tanh": ("gelu", "tanh"), "silu": ("swish", "")}


# torch >= 2.3 has torch.compiler.is_compiling; before that only torch._dynamo's (imported on first use)
_is_compiling = (torch.compiler.is_compiling if hasattr(getattr(torch, "compiler", None), "is_compiling")
                 else lambda: torch._dynamo.is_compiling())

# torch >= 2.4 takes the device type; older versions have a CPU-specific function
_cpu_autocast = ((lambda: torch.is_autocast_enabled("cpu")) if hasattr(torch, "get_autocast_dtype")
                 else torch.is_autocast_cpu_enabled)


@functools.lru_cache(maxsize=None)
def _has_onednn_op() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_available() -> bool:
    """True when this PyTorch build has the oneDNN linear kernel and ``torch.backends.mkldnn`` is enabled."""
    return torch.backends.mkldnn.enabled and _has_onednn_op()


def onednn_usable(x: torch.Tensor, weight: torch.Tensor) -> str | None:
    """None when the oneDNN path can run on these tensors, else the reason why not."""
    if x.device.type != "cpu":
        return f"the input is on {x.device.type}, oneDNN runs on CPU"
    if x.dtype != torch.float32 or weight.dtype != torch.float32:
        return f"the input is {x.dtype}, the fused CPU kernel is used for float32 only"
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return "autograd is on and the oneDNN kernel has no backward; use torch.no_grad() or inference_mode()"
    if _cpu_autocast():
        return "CPU autocast is on, and F.linear is what autocast casts to lower precision"
    if _is_compiling():
        return "inside torch.compile, which fuses the linear layers itself"
    if not onednn_available():
        return "this PyTorch build has no oneDNN linear kernel or torch.backends.mkldnn is disabled"
    return None


def _activate(y: torch.Tensor, act: str | None) -> torch.Tensor:
    return y if act is None else ACTS[act](y)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, act: str | None = None,
           impl: str = "auto") -> torch.Tensor:
    """``ACTS[act](F.linear(x, weight, bias))`` (no activation when ``act`` is None), on the chosen kernel."""
    if impl != "torch":
        why_not = onednn_usable(x, weight)
        if why_not is None:
            fused = act in _ONEDNN_ACTS
            post, algorithm = _ONEDNN_ACTS[act] if fused else _ONEDNN_ACTS[None]
            y = torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, post, [], algorithm)
            return y if fused else _activate(y, act)
        if impl == "onednn":
            raise RuntimeError(f"linear impl 'onednn' cannot run here: {why_not}; use 'auto' or 'torch'")
    return _activate(F.linear(x, weight, bias), act)


def apply_linear(module: torch.nn.Module, x: torch.Tensor, act: str | None = None,
                 impl: str = "auto") -> torch.Tensor:
    """``module(x)`` then the activation; on the fast kernel when ``module`` is a plain ``nn.Linear``.

    A subclass or replacement (LoRA, quantised layers) or a module carrying PyTorch hooks is called as it
    is, so that it keeps its behaviour.
    """
    if type(module) is torch.nn.Linear and not (module._forward_hooks or module._forward_pre_hooks):
        return linear(x, module.weight, module.bias, act=act, impl=impl)
    return _activate(module(x), act)
