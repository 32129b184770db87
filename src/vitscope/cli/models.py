"""`vitscope models` (the registry) and `vitscope inspect MODEL` (config, token layout, hook shapes)."""
from __future__ import annotations

import json
from typing import Optional

import typer


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def models_table(family: str | None = None) -> str:
    """The registry as a plain-text table (what `vitscope models` prints)."""
    from vitscope.models.registry import families, list_models

    entries = list_models(family)
    if not entries:
        raise ValueError(f"no registered model of family {family!r}; families: {', '.join(families())}")
    rows = []
    for e in entries:
        r = e.row()
        rows.append([r["name"], r["family"], r["size"], str(r["input_size"]), ", ".join(r["aliases"]), r["weights"]])
    table = _table(rows, ["name", "family", "size", "input", "aliases", "weights"])
    if family is None:
        from vitscope.models.bundled import bundled_models

        table += ("\n\nbundled with vitscope (trained on the synthetic benchmark, no network; docs/demo-model.md): "
                  + ", ".join(bundled_models()))
    return table


def _norm_name(mean, std) -> str:
    from vitscope.models.preprocess import CLIP_MEAN, IMAGENET_MEAN, INCEPTION_MEAN

    known = {tuple(IMAGENET_MEAN): "ImageNet", tuple(CLIP_MEAN): "CLIP", tuple(INCEPTION_MEAN): "[-1, 1]",
             (0.0, 0.0, 0.0): "[0, 1]"}
    return known.get(tuple(mean), f"{tuple(mean)} / {tuple(std)}")


def models_markdown(family: str | None = None) -> str:
    """The registry as a Markdown table (docs/models.md is generated with `vitscope models --markdown`)."""
    from vitscope.models.registry import list_models

    lines = ["| name | aliases | family | size | input | crop | interp. | normalisation | weights |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in list_models(family):
        r = e.row()
        weights = "<br>".join(f"`{s}`" for s in r["sources"]) or "-"
        lines.append(f"| `{r['name']}`{' (extra)' if e.extra else ''} | {', '.join(f'`{a}`' for a in r['aliases'])} "
                     f"| {r['family']} | {r['size']} | {r['input_size']} | {r['crop_pct']} | {r['interpolation']} "
                     f"| {_norm_name(r['mean'], r['std'])} | {weights} |")
    return "\n".join(lines)


def inspect_text(d: dict) -> str:
    """Human-readable form of :func:`vitscope.models.inspect.describe`."""
    meta, cfg = d["meta"], d["config"]
    out = [f"model: {meta.get('name', '?')}  (family {meta.get('family', '?')}, weights: {meta.get('source', '?')})"]
    if meta.get("weights_sha256"):
        out.append(f"weights sha256: {meta['weights_sha256']}")
    out.append(f"parameters: {d['parameters']:,}")
    out.append("")
    out.append("config:")
    for k, v in cfg.items():
        if k != "meta":
            out.append(f"  {k}: {v}")
    if d["preprocess"]:
        out.append("preprocess:")
        for k, v in d["preprocess"].items():
            out.append(f"  {k}: {v}")
    out.append("")
    out.append(f"token layout for an input of {d['input'][2]}x{d['input'][3]} "
               f"(block i = tokens entering block i; block {cfg['depth']} = output):")
    for row in d["layout"]:
        a, b = row["blocks"]
        blocks = f"block {a}" if a == b else f"blocks {a}-{b}"
        out.append(f"  {blocks:<14} T={row['n_tokens']:<5} {row['text']}")
    out.append("")
    out.append(f"hooks (shape for input {tuple(d['input'])}):")
    width = max(len(n) for n in d["hooks"])
    for name, shape in d["hooks"].items():
        out.append(f"  {name:<{width}}  {tuple(shape) if shape is not None else '(not reached by this model)'}")
    return "\n".join(out)


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models_cmd(
        family: Optional[str] = typer.Option(None, "--family", "-f",
                                             help="Only this family (vit, deit, dino, dinov2, clip, mae, mocov3, beit)."),
        as_json: bool = typer.Option(False, "--json", help="Print the registry as JSON (one object per model)."),
        markdown: bool = typer.Option(False, "--markdown", help="Print a Markdown table (as in docs/models.md)."),
    ) -> None:
        """List the registry: name, family, size, input size, aliases, where the weights come from.

        Any name or alias loads with `vitscope.load_model(NAME)`; `timm/<name>` and `hf:<repo>` work too.
        """
        if as_json:
            from vitscope.models.registry import families, list_models

            entries = list_models(family)
            if not entries:
                raise ValueError(f"no registered model of family {family!r}; families: {', '.join(families())}")
            typer.echo(json.dumps([e.row() for e in entries], indent=2))
        elif markdown:
            typer.echo(models_markdown(family))
        else:
            typer.echo(models_table(family))

    @app.command("inspect")
    def inspect_cmd(
        model: str = typer.Argument(..., help="Registry name or alias, timm/<name>, hf:<repo>, or a local folder/file."),
        random: bool = typer.Option(False, "--random", help="Random weights: no download, no network."),
        weights: Optional[str] = typer.Option(None, "--weights", "-w",
                                              help="Local checkpoint to load into MODEL's architecture."),
        input_size: Optional[int] = typer.Option(None, "--input-size",
                                                 help="Input side in pixels (default: the model's own)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random init (with --random)."),
        as_json: bool = typer.Option(False, "--json", help="Print everything as JSON."),
    ) -> None:
        """Print MODEL's config, the token layout per block and every hook name with its shape.

        Shapes come from one forward of a zero image (works with --random and no network).
        """
        from vitscope.cli.common import refuse_weights_with_random
        from vitscope.models.inspect import describe
        from vitscope.models.loading import load_model

        refuse_weights_with_random(weights, random)
        m = load_model(model, pretrained=not random, weights=weights, seed=seed if random else None,
                       input_size=input_size)
        d = describe(m)
        typer.echo(json.dumps(d, indent=2, default=str) if as_json else inspect_text(d))
