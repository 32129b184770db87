"""`vitscope app`: the Gradio web app (needs the optional extra: pip install "vitscope[app]")."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from vitscope.cli.common import DEVICE_HELP


def register(app: typer.Typer) -> None:
    @app.command("app")
    def app_cmd(
        models: Optional[List[str]] = typer.Option(
            None, "--model", "-m",
            help="Model(s) listed in the page (default: the bundled demo-vit and demo-vit-reg4, offline). A registry "
                 "name, timm/<name>, hf:<repo> or a local path; more can be typed in the page."),
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0 for every interface)."),
        port: int = typer.Option(7860, "--port", help="Port to listen on."),
        device: Optional[str] = typer.Option(None, "--device", help=DEVICE_HELP),
        concurrency: int = typer.Option(4, "--concurrency", help="Requests run at the same time (Gradio's queue)."),
        cache_size: int = typer.Option(3, "--cache-size", help="Models kept in memory (least recently used dropped)."),
        max_mb: float = typer.Option(20.0, "--max-mb", help="Largest upload accepted, in MiB."),
        max_megapixels: float = typer.Option(40.0, "--max-megapixels", help="Largest image accepted, in megapixels."),
        tmp_dir: Optional[Path] = typer.Option(None, "--tmp-dir",
                                               help="The app's folder for uploads and results (default: a new "
                                                    "temporary folder). Nothing outside it is served."),
        saes: Optional[List[Path]] = typer.Option(
            None, "--sae",
            help="Sparse autoencoder(s) for the 'SAE features' tab (repeatable): an SAE folder written by `vitscope "
                 "sae train`, a folder of them (its output folder), a SAELens folder or a saev .pt file."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="Less output."),
    ) -> None:
        """Start the web app: attention per head and block, rollout and relevance, CLS / register maps, attention
        distance, logit lens, patching, SAE features (with --sae) and top-5 predictions on your own images."""
        try:
            import gradio  # noqa: F401
        except ImportError:
            raise RuntimeError('the web app needs Gradio: pip install "vitscope[app]"') from None
        from vitscope.app.ui import build_app, launch

        demo, state = build_app(models or None, tmp_dir, device, concurrency, cache_size,
                                int(max_mb * 2**20), int(max_megapixels * 1e6), saes=saes)
        if not quiet:
            typer.echo(f"vitscope app: {', '.join(state.model_names)} on {state.models.device}"
                       + (f"; SAEs {', '.join(state.saes)}" if state.saes else "")
                       + f"; files in {state.root}; http://{host}:{port}")
        launch(demo, state, host, port, block=True, quiet=quiet)
