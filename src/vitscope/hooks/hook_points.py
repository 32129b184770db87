"""HookPoint, the hooked-module base class and the activation cache.

The design follows TransformerLens: every interesting activation passes through an identity
``HookPoint`` module whose dotted module path is its public name (``blocks.3.attn.hook_pattern``).
Hooks are plain functions ``fn(activation, hook) -> None | Tensor``; returning a tensor replaces the
activation. Every hook added by ``run_with_hooks`` / ``run_with_cache`` / ``hooks()`` is removed when
the call ends, also when it raises.
"""
from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Union

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], Union[torch.Tensor, None]]
NameFilter = Union[None, str, Sequence[str], Callable[[str], bool]]


class HookPoint(nn.Module):
    """Identity module that marks a hookable activation; ``name`` is set by the root model."""

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""

    @property
    def active(self) -> bool:
        """True when at least one forward hook is attached (used to choose the attention path)."""
        return bool(self._forward_hooks)

    def add_hook(self, fn: HookFn) -> torch.utils.hooks.RemovableHandle:
        def _wrapped(module: nn.Module, inputs, output):
            return fn(output, self)

        return self.register_forward_hook(_wrapped)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def extra_repr(self) -> str:
        return self.name


def make_filter(names_filter: NameFilter) -> Callable[[str], bool]:
    """Turn ``None`` (everything), a name, a glob pattern, a list of them or a predicate into a predicate."""
    if names_filter is None:
        return lambda name: True
    if callable(names_filter):
        return names_filter
    if isinstance(names_filter, str):
        names_filter = [names_filter]
    patterns = list(names_filter)

    def _match(name: str) -> bool:
        return any(name == p or fnmatch.fnmatchcase(name, p) for p in patterns)

    return _match


class ActivationCache(dict):
    """A ``dict`` of hook name -> tensor, with a few conveniences.

    ``cache["blocks.3.attn.hook_pattern"]`` is the tensor; ``cache.stack("hook_resid_post")`` stacks
    one activation over all blocks that recorded it (only when the shapes agree).
    """

    def stack(self, suffix: str) -> torch.Tensor:
        names = sorted((n for n in self if n.startswith("blocks.") and n.endswith(suffix)),
                       key=lambda n: int(n.split(".")[1]))
        if not names:
            raise KeyError(f"no cached activation ends with {suffix!r}; cached: {sorted(self)[:8]}...")
        return torch.stack([self[n] for n in names])

    def to(self, device) -> "ActivationCache":
        return ActivationCache({k: v.to(device) for k, v in self.items()})


class HookedRootModule(nn.Module):
    """Base class that names its ``HookPoint`` children and runs the model with temporary hooks."""

    def setup_hooks(self) -> None:
        self.hook_dict: dict[str, HookPoint] = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    @property
    def hook_names(self) -> list[str]:
        return list(self.hook_dict)

    def _resolve(self, name_or_filter: NameFilter) -> list[HookPoint]:
        if isinstance(name_or_filter, str) and name_or_filter in self.hook_dict:
            return [self.hook_dict[name_or_filter]]
        pred = make_filter(name_or_filter)
        points = [hp for n, hp in self.hook_dict.items() if pred(n)]
        if isinstance(name_or_filter, str) and not points:
            raise KeyError(self._unknown(name_or_filter))
        if not isinstance(name_or_filter, str) and not callable(name_or_filter):
            for p in name_or_filter:                # a list: each name or pattern must match a hook
                if not any(n == p or fnmatch.fnmatchcase(n, p) for n in self.hook_dict):
                    raise KeyError(self._unknown(p))
        return points

    def _unknown(self, name: str) -> str:
        return (f"unknown hook name {name!r}; see model.hook_names or `vitscope inspect MODEL` "
                f"(e.g. {self.hook_names[:3]})")

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = ()) -> Iterator["HookedRootModule"]:
        """Context manager: attach ``fwd_hooks`` for the duration of the ``with`` block."""
        handles = []
        try:
            for name_or_filter, fn in fwd_hooks:
                for hp in self._resolve(name_or_filter):
                    handles.append(hp.add_hook(fn))
            yield self
        finally:
            for h in handles:
                h.remove()

    def reset_hooks(self) -> None:
        """Remove every hook from every HookPoint (also ones added by hand)."""
        for hp in self.hook_dict.values():
            hp._forward_hooks.clear()

    def run_with_hooks(self, *args, fwd_hooks: Iterable[tuple[NameFilter, HookFn]] = (), **kwargs):
        """Run ``self(*args, **kwargs)`` with the given hooks; they are removed afterwards."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter: NameFilter = None, device=None,
                       detach: bool = True, **kwargs):
        """Run the model and return ``(output, ActivationCache)`` of the activations matching ``names_filter``.

        ``names_filter``: None (all hooks), a hook name, a glob (``"blocks.*.attn.hook_pattern"``), a list
        of those, or a predicate ``str -> bool``. Only matching hooks are attached.
        """
        cache = ActivationCache()

        def _save(t: torch.Tensor, hook: HookPoint):
            v = t.detach() if detach else t
            cache[hook.name] = v.to(device) if device is not None else v

        points = self._resolve(names_filter) if names_filter is not None else list(self.hook_dict.values())
        handles = []
        try:
            for hp in points:
                handles.append(hp.add_hook(_save))
            out = self(*args, **kwargs)
        finally:
            for h in handles:
                h.remove()
        return out, cache
