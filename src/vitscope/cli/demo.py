"""`vitscope demo` and `vitscope report`: the HTML report (thin wrappers over vitscope.report)."""
from __future__ import annotations

from typing import Optional

import typer


def _analyses(text: Optional[str]):
    return [a.strip() for a in text.split(",") if a.strip()] if text else None


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        out: str = typer.Option("runs/demo", "--out", "-o", help="Folder of the report (report.html + figures)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """The whole analysis suite on the bundled demo models and synthetic images: no network, no data needed.
        Writes OUT/report.html."""
        import time

        from vitscope.report.demo import run_demo

        t0 = time.time()
        page = run_demo(out, progress=not quiet)
        typer.echo(f"report written to {page} ({time.time() - t0:.0f} s); open it in a browser")

    @app.command("report")
    def report_cmd(
        model: str = typer.Option(..., "--model", "-m", help="A model: registry name, hf:<repo>, timm/<name>, a "
                                                              "folder or file, or a bundled demo model "
                                                              "(demo-vit, demo-vit-reg4)."),
        data: Optional[str] = typer.Option(None, "--data", "-d", help="Images: a folder, list file, dataset spec "
                                                                      "or synthetic:...; without it only the "
                                                                      "model-only sections run."),
        out: str = typer.Option("runs/report", "--out", "-o", help="Folder of the report."),
        n_images: int = typer.Option(32, "--n-images", help="Images for the attention analyses."),
        n_eval: int = typer.Option(512, "--n-eval", help="Images for accuracy, CKA and clustering."),
        analyses: Optional[str] = typer.Option(None, "--analyses", help="Comma-separated analyses to run "
                                                                        "(default: all registered)."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    ) -> None:
        """Run the report's analyses on your model and images; sections that need labels or masks are skipped
        with a line saying why. Writes OUT/report.html."""
        from vitscope.cli.common import check_range
        from vitscope.report import report

        check_range(n_images, "--n-images", 1)
        check_range(n_eval, "--n-eval", 1)
        page = report(model, data, out=out, name=model, analyses=_analyses(analyses), progress=not quiet,
                      n_images=n_images, n_eval=n_eval)
        typer.echo(f"report written to {page}")
