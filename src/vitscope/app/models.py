"""Models for the web app: loaded once, kept in a bounded least-recently-used cache, one lock each.

The app starts on the bundled demo models (no network). Any name ``vitscope.load_model`` takes (registry
name, ``timm/<name>``, ``hf:<repo>``, a local folder or file) can be added; weights are downloaded only then,
and a failed download is one line saying why (no network, offline mode, unknown name). ``random=True``
builds the architecture with random weights (seed 0), which needs no download for registry names.

Hooks live on the model's modules, so two requests must not run the same model at once: every entry has a
lock, held while the model runs.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field

DEMO_MODELS = ("demo-vit", "demo-vit-reg4")


@dataclass
class LoadedModel:
    """A model in the cache, with what the views need around it."""

    name: str
    random: bool
    model: object
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def label(self) -> str:
        return self.name + (" (random weights)" if self.random else "")

    @property
    def classes(self) -> list[str] | None:
        return class_names(self.model)


def class_names(model) -> list[str] | None:
    """Class names the model carries (``cfg.meta["classes"]`` or ``meta["classes"]``), None when unknown."""
    for meta in (getattr(model.cfg, "meta", None), getattr(model, "meta", None)):
        if isinstance(meta, dict) and meta.get("classes") and len(meta["classes"]) == model.cfg.num_classes:
            return [str(c) for c in meta["classes"]]
    return None


def class_label(model, c: int) -> str:
    names = class_names(model)
    return f"{c}: {names[c]}" if names else f"class {c}"


def _one_line(e: BaseException) -> str:
    msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    return " ".join(msg.split()) or type(e).__name__


class ModelCache:
    """At most ``capacity`` models in memory; the least recently used one is dropped first."""

    def __init__(self, capacity: int = 3, device: str | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"the model cache needs room for at least one model, got capacity={capacity}")
        from vitscope.runtime import resolve_device

        self.capacity = capacity
        self.device = resolve_device(device)
        self._items: OrderedDict[tuple[str, bool], LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[tuple[str, bool], threading.Lock] = {}
        self.loads = 0                                   # how many times a model was built (tests read it)

    def __contains__(self, key) -> bool:
        name, random = key
        return (str(name).strip(), bool(random)) in self._items

    def names(self) -> list[str]:
        return [n for n, _ in self._items]

    def get(self, name: str, random: bool = False) -> LoadedModel:
        """The model ``name`` (loading it on first use); RuntimeError with one readable line when it cannot load."""
        name = str(name or "").strip()
        if not name:
            raise ValueError("no model chosen; pick one of the list or type a model name")
        key = (name, bool(random))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            gate = self._loading.setdefault(key, threading.Lock())
        with gate:                                       # one load per model, even with concurrent requests
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            entry = LoadedModel(name, bool(random), self._load(name, bool(random)))
            with self._lock:
                self._items[key] = entry
                self._loading.pop(key, None)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return entry

    def _load(self, name: str, random: bool):
        from vitscope.models.loading import load_model

        try:
            model = load_model(name, pretrained=not random, device=self.device, seed=0 if random else None,
                               progress=False)
        except (OSError, ValueError, KeyError, RuntimeError, ImportError) as e:
            raise RuntimeError(f"could not load model {name!r}: {_one_line(e)}") from None
        self.loads += 1
        return model.eval()
