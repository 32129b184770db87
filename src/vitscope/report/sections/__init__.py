"""vitscope's own report analyses; importing this package registers them (see vitscope.report.registry).

To add an analysis: write ``fn(ctx) -> Section`` in one of these modules (or a new one imported here) and
decorate it with ``@analysis(name, title, needs=..., order=...)``.
"""
import importlib
import importlib.util

# section modules, imported in this order; a module that is not there (yet) is skipped
SECTION_MODULES = (
    "card", "attention", "tokens", "similarity", "knn", "retrieval", "video_segmentation", "correspondence",
    "probes", "class_embedding", "removal", "attribution_maps", "patching", "sae",
)

for _name in SECTION_MODULES:
    if importlib.util.find_spec(f"vitscope.report.sections.{_name}") is not None:
        importlib.import_module(f"vitscope.report.sections.{_name}")
