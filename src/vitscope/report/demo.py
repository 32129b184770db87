"""`vitscope demo`: the whole analysis suite on the bundled demo models and the synthetic benchmark.

No network and no user data: the two models are committed under ``vitscope/assets/models/`` (trained with
``vitscope train``, see docs/demo-model.md) and the images are generated on the fly from a held-out split.
"""
from __future__ import annotations

from pathlib import Path

from vitscope.bundled import BUNDLED_DIR as ASSETS
from vitscope.bundled import DEMO_DATA, bundled_models, bundled_path  # noqa: F401  (DEMO_DATA: the benchmark)
DEMO_MODELS = {
    "demo-vit": "demo-vit: 6 blocks, 8 heads, CLS from block 0",
    "demo-vit-reg4": "demo-vit-reg4: 8 blocks, 4 registers from block 3, CLS from block 6 (cls-register)",
}


def demo_model_path(name: str) -> Path:
    """Folder of a bundled demo model (config.json + model.safetensors)."""
    path = bundled_path(name)
    if path is None:
        raise FileNotFoundError(f"bundled model {name!r} not found in {ASSETS}; available: {bundled_models()}")
    return path


def held_out_spec(n: int = 512) -> str:
    """The held-out split of the demo benchmark (never seen in training or validation)."""
    return f"{DEMO_DATA},n={n},split=test"


def run_demo(out: str | Path = "runs/demo", n_images: int = 32, n_eval: int = 512, progress: bool = True,
             analyses=None) -> Path:
    """Write ``out/report.html`` for both demo models on the held-out synthetic split; returns its path."""
    from vitscope.models.loading import load_model
    from vitscope.report.build import ModelSpec, build_report

    data = held_out_spec(n_eval)
    specs = []
    for name, title in DEMO_MODELS.items():
        model = load_model(str(demo_model_path(name)))
        extra = model.meta.get("extra", {})
        info = {"trained": f"vitscope train, seed {extra.get('seed', '?')}, {extra.get('epochs', '?')} epochs, "
                           f"best validation accuracy {100 * float(extra.get('best_val_acc', float('nan'))):.1f}%"}
        specs.append(ModelSpec(model, data, name=name, title=title, info=info))
    subtitle = (f"Two small ViTs trained by <code>vitscope train</code> on the synthetic shapes benchmark, shown on "
                f"its held-out test split (<code>{data}</code>, {n_eval} images, object masks known). "
                f"Every section below is one entry of the report registry; "
                f"<code>vitscope report --model M --data D</code> runs the same suite on your model and images.")
    return build_report(specs, out, title="vitscope demo", subtitle=subtitle, analyses=analyses,
                        progress=progress, n_images=n_images, n_eval=n_eval)
