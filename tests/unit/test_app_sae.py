"""The app's "SAE features" tab on a tiny model and SAEs made here: the latents of every patch equal a plain loop
over the SAE's definition (normalisation, pre-encoder bias, encoder, activation) on the cached stream; a clicked
patch lists exactly its non-zero latents, largest first; the logit effect and the nearest latents follow their
definitions; a width mismatch is one message; the tab builds with an SAE given (and says how to get one without);
the static browser page names the store by its folder only."""
from __future__ import annotations

import dataclasses
from pathlib import Path
import numpy as np
import pytest
import torch
from PIL import Image
from test_app_bad_upload import _fire  # noqa: E402  (walks the page's event chain as Gradio runs it; one copy)

from vitscope import HookedViT, PreprocessConfig, ViTConfig
from vitscope.analysis.sae import SAE, SAEConfig, save_sae
from vitscope.app import sae_view as SV

torch.set_num_threads(1)
BLOCK = 1


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=4,
                            meta={"classes": ["circle", "square", "triangle", "cross"]}),
                  PreprocessConfig(input_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3))
    m.meta = {"name": "tiny"}
    return m.eval()


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    a[8:24, 8:20] = [220, 40, 40]
    return Image.fromarray(a)


def make_sae(arch: str, d_in: int = 32, width: int = 48, seed: int = 0, **meta) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=d_in, width=width, arch=arch, k=(5,), block=(BLOCK,), meta={"model": "tiny", **meta}))
    with torch.no_grad():
        sae.W_enc[0] = torch.randn(d_in, width, generator=g) / d_in ** 0.5
        sae.b_enc[0] = torch.randn(width, generator=g) * 0.3 - 0.2
        sae.W_dec[0] = torch.randn(width, d_in, generator=g)
        sae.b_dec[0] = torch.randn(d_in, generator=g) * 0.1
        sae.scale[0] = 0.7                                  # the saved normalisation: not 1, so that it counts
    return sae


def plain_latents(model, photo, sae, name: str = f"blocks.{BLOCK}.hook_resid_post") -> np.ndarray:
    """(rows, cols, w) from the definition: x * scale - b_dec, times W_enc, plus b_enc, then the activation, on the
    activation ``name``."""
    x = model.preprocess([photo])
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=name)
    lay = model.token_layout(BLOCK)
    acts = cache[name][0, lay.patches].double().numpy()                            # patches, d
    W, be = sae.W_enc[0].detach().double().numpy(), sae.b_enc[0].detach().double().numpy()
    bd, s, k = sae.b_dec[0].detach().double().numpy(), float(sae.scale[0]), int(sae.cfg.k[0])
    d, w = W.shape
    out = np.zeros((len(acts), w))
    for t in range(len(acts)):
        for j in range(w):
            pre = be[j]
            for i in range(d):
                pre += (acts[t, i] * s - bd[i]) * W[i, j]
            out[t, j] = max(pre, 0.0)
        if sae.arch == "topk":                             # keep the k largest, the rest zero
            order = sorted(range(w), key=lambda j: -out[t, j])
            for j in order[k:]:
                out[t, j] = 0.0
    rows, cols = lay.grid
    return out.reshape(rows, cols, w)


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_patch_latents_and_the_clicked_patch_follow_the_definition(model, photo, arch):
    sae = make_sae(arch)
    want = plain_latents(model, photo, sae)
    rows, cols, w = want.shape
    v = SV.sae_view(model, photo, sae, name="tiny-sae")
    got = np.zeros_like(want)
    t = v.table
    got[t["row"], t["col"], t["latent"]] = t["value"]
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert (t["value"] > 0).all() and len(t) == int((want > 1e-6).sum())
    # no patch: the image's latents by their largest activation, and the strongest one shown
    peak = want.max((0, 1))
    assert list(v.arrays["listed_latents"]) == sorted(np.flatnonzero(peak > 1e-6), key=lambda j: -peak[j])
    assert v.meta["latent"] == v.arrays["listed_latents"][0]
    np.testing.assert_allclose(v.arrays["heat"], want[..., v.meta["latent"]], atol=1e-5)
    for r in range(rows):
        for c in range(cols):
            vp = SV.sae_view(model, photo, sae, patch=(r, c), name="tiny-sae")
            at = want[r, c]
            expected = sorted(np.flatnonzero(at > 1e-6), key=lambda j: -at[j])
            assert list(vp.arrays["listed_latents"]) == expected, (r, c)
            np.testing.assert_allclose(vp.arrays["listed_values"], at[expected], atol=1e-5)
            table = SV.listing(vp)
            assert list(table["latent"]) == expected and list(table.columns) == list(SV.LISTING)
            assert list(table["active patches"]) == [int((want[..., j] > 1e-6).sum()) for j in expected]
            assert vp.meta["latent"] == (expected[0] if expected else None) and vp.meta["patch"] == [r, c]
    if arch == "topk":
        assert max((want > 0).sum(-1).max(), 0) <= 5


def test_logit_effect_nearest_latents_and_a_chosen_latent(model, photo):
    sae = make_sae("relu")
    lat = 7
    v = SV.sae_view(model, photo, sae, latent=lat, patch=(1, 2), neighbours=4, logits=2)
    want = plain_latents(model, photo, sae)
    np.testing.assert_allclose(v.arrays["heat"], want[..., lat], atol=1e-5)
    assert v.meta["latent"] == lat
    # logit effect: the atom through the final LayerNorm and the linear head, centred over the classes
    atom = sae.W_dec[0, lat].detach().double()
    ln, head = model.ln_final, model.head
    with torch.no_grad():
        h = (atom - atom.mean()) / torch.sqrt(atom.var(unbiased=False) + ln.eps) * ln.weight.double() + ln.bias.double()
        logit = h @ head.weight.double().T + head.bias.double()
    np.testing.assert_allclose(v.arrays["logit_effect"], (logit - logit.mean()).numpy(), atol=1e-5)
    top = int(torch.argmax(logit))
    assert f"logit effect up {top}: {['circle', 'square', 'triangle', 'cross'][top]}" in v.note
    # nearest latents: the largest decoder cosines with the other atoms
    W = sae.W_dec[0].detach().double()
    cos = [(float(W[lat] @ W[j] / (W[lat].norm() * W[j].norm())), j) for j in range(W.shape[0]) if j != lat]
    assert v.meta["neighbours"] == [j for _, j in sorted(cos, reverse=True)[:4]]
    with pytest.raises(ValueError, match="latent 48 does not exist; tiny-sae has 48 latents"):
        SV.sae_view(model, photo, sae, latent=48, name="tiny-sae")
    with pytest.raises(ValueError, match="outside the 4 x 4 patch grid"):
        SV.sae_view(model, photo, sae, patch=(4, 0))


def test_an_sae_of_the_mlp_hidden_layer(model, photo, tmp_path):
    """An SAE of ``blocks.{i}.mlp.hook_post`` (4 x wider): the tab's latents follow the definition on that
    activation; its atoms are not in the stream's space, so neither the tab nor the browser page shows a logit
    effect, and both name the site."""
    from vitscope.analysis.sae.browse import BrowseOptions, write_browser

    sae = make_sae("relu", d_in=128)
    sae.cfg.site = "blocks.{i}.mlp.hook_post"
    want = plain_latents(model, photo, sae, f"blocks.{BLOCK}.mlp.hook_post")
    v = SV.sae_view(model, photo, sae, latent=3, name="mlp-sae")
    np.testing.assert_allclose(v.arrays["heat"], want[..., 3], atol=1e-5)
    assert "logit_effect" not in v.arrays and "logit effect" not in v.note and "mlp.hook_post" in v.note
    page = write_browser(sae, model, "synthetic:size=32,classes=4,n=8,split=test", tmp_path / "page",
                         BrowseOptions(limit=8, latents=3, top=2)).read_text()
    assert "class='latent'" in page and "logit effect" not in page and "mlp.hook_post" in page


def test_width_mismatch_is_one_message(model, photo):
    v = SV.sae_view(model, photo, make_sae("topk", d_in=16), name="wide")
    assert v.figure is None and v.table is None and "\n" not in v.note
    assert "16-dim" in v.note and "width 32" in v.note and "trained on tiny" in v.note


def test_the_tab_builds_with_an_sae_and_says_how_to_get_one_without(tmp_path, photo):
    import gradio as gr

    from vitscope.analysis.sae.io import load_sae
    from vitscope.app.ui import build_blocks, handlers, make_state, pick_latent
    from vitscope.runtime import load_model

    width = load_model("demo-vit").cfg.embed_dim
    runs = tmp_path / "runs"
    for i, name in enumerate(("topk-b1-a", "topk-b1-b")):
        sae = make_sae("topk", d_in=width, seed=i, store=str(tmp_path / "feats" / "demo-train"))
        sae.cfg.meta["model"] = "demo-vit"
        save_sae(sae, runs / name)
    (runs / "checkpoint").mkdir()                          # the trainer's checkpoint folder is not an SAE
    state = make_state(models=["demo-vit"], tmp_dir=tmp_path / "app", saes=[runs])
    assert list(state.saes) == ["topk-b1-a", "topk-b1-b"]
    demo = build_blocks(state)
    assert isinstance(demo, gr.Blocks)
    assert any(f.api_name == "sae" for f in demo.fns.values())
    comps = {getattr(b, "elem_id", None): b for b in demo.blocks.values()}
    assert comps["vs-sae"].visible and not comps["vs-sae-none"].visible
    # a new image runs the tab's view with the others
    values = {i: getattr(b, "value", None) for i, b in demo.blocks.items()}
    assert _fire(demo, values, comps["vs-upload"], "change") == []
    assert Path(values[comps["vs-sae"]._id]).is_file() and "on this image" in values[comps["vs-sae-note"]._id]
    fig, table, note, files = handlers(state)["sae"]("demo-vit", False, None, "cat", "topk-b1-a", None, "2,3")
    assert fig.endswith(".png") and list(table.columns) == list(SV.LISTING) and "patch (2, 3)" in note
    assert str(tmp_path) not in note and "store demo-train" in note
    want = SV.sae_view(state.models.get("demo-vit").model, state.image(None, "cat"), load_sae(runs / "topk-b1-a"),
                       patch=(2, 3))
    np.testing.assert_array_equal(table["latent"], want.arrays["listed_latents"])
    if len(table):
        assert pick_latent(table, [0, 1]) == int(table["latent"].iloc[0])
    with pytest.raises(gr.Error, match="the latent is a whole number"):
        handlers(state)["sae"]("demo-vit", False, None, "cat", "topk-b1-a", "1.5", "")

    bare = dataclasses.replace(state, saes={})                # the app started without --sae
    demo2 = build_blocks(bare)
    comps = {getattr(b, "elem_id", None): b for b in demo2.blocks.values()}
    assert comps["vs-sae-none"].visible and not comps["vs-sae"].visible
    assert not any(f.api_name == "sae" for f in demo2.fns.values())
    assert "vitscope sae train" in SV.NO_SAE and "\n" not in SV.NO_SAE
    assert handlers(bare)["sae"]("demo-vit", False, None, "cat", None, None, "")[2] == SV.NO_SAE


def test_browser_page_names_the_store_by_its_folder_only(model, tmp_path):
    from vitscope.analysis.sae.browse import BrowseOptions, write_browser

    store = tmp_path / "machine" / "feats" / "demo-train"
    sae = make_sae("topk", store=str(store))
    page = write_browser(sae, model, "synthetic:size=32,classes=4,n=8,split=test", tmp_path / "page",
                         BrowseOptions(limit=8, latents=3, top=2))
    text = page.read_text()
    assert str(store) not in text and str(tmp_path) not in text and "machine" not in text
    assert "store demo-train" in text and "model tiny" in text and f"block {BLOCK}, resid_post," in text
    assert "patches tokens" in text


def test_app_command_refuses_a_path_without_an_sae(tmp_path):
    from typer.testing import CliRunner

    from vitscope.cli.main import app

    (tmp_path / "empty").mkdir()
    for bad, says in ((tmp_path / "missing", "no SAE at"), (tmp_path / "empty", "holds no SAE")):
        r = CliRunner().invoke(app, ["app", "--sae", str(bad), "--tmp-dir", str(tmp_path / "app"), "-q"])
        # the error `vitscope.cli.main.main` prints as one line with exit 1
        assert isinstance(r.exception, (FileNotFoundError, ValueError)), r.output
        assert says in str(r.exception) and "\n" not in str(r.exception) and not (tmp_path / "app").exists()


@pytest.mark.parametrize("tokens", ["cls", "mean"])
def test_browser_ranks_images_on_the_token_an_image_sae_reads(model, tokens, tmp_path):
    """An SAE of CLS (or mean patch) tokens: the page ranks images by the latent on that row of each image (read
    here with a plain hook and the definition), its density and histogram are over images, and the heat maps show
    the latent on the patch tokens (:func:`plain_latents`' definition)."""
    from vitscope.analysis.sae.browse import BrowseOptions, latent_summary, write_browser
    from vitscope.analysis.sae.evaluation import _images

    sae = make_sae("relu")
    sae.cfg = dataclasses.replace(sae.cfg, tokens=tokens)
    data = "synthetic:size=32,classes=4,n=12,split=test"
    images = _images(model, data, None)[0]
    with torch.no_grad():
        _, cache = model.run_with_cache(images, names_filter=f"blocks.{BLOCK}.hook_resid_post")
    a, lay = cache[f"blocks.{BLOCK}.hook_resid_post"].double(), model.token_layout(BLOCK)
    rows = a[:, lay.cls] if tokens == "cls" else a[:, lay.patches].mean(1)
    W, be = sae.W_enc[0].detach().double(), sae.b_enc[0].detach().double()
    ref = torch.relu((rows * float(sae.scale[0]) - sae.b_dec[0].detach().double()) @ W + be).numpy()    # N, w
    info = latent_summary(sae, model, images, BrowseOptions(limit=12, latents=4, top=3))
    assert info["unit"] == "images"
    np.testing.assert_allclose(info["density"], (ref > 0).mean(0), atol=1e-6)
    for it in info["latents"]:
        col = ref[:, it["id"]]
        want = [i for i in np.argsort(-col, kind="stable")[:3] if col[i] > 0]
        assert it["top"] == want
        np.testing.assert_allclose(it["peak"], col[want], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(np.sort(it["values"]), np.sort(col[col > 0]), rtol=1e-4, atol=1e-5)
        for i, heat in zip(it["top"], it["heat"]):
            img = Image.fromarray(((images[i].permute(1, 2, 0).numpy() * 0.5 + 0.5) * 255).round().astype(np.uint8))
            np.testing.assert_allclose(heat, plain_latents(model, img, sae)[..., it["id"]], rtol=1e-3, atol=1e-3)
    text = write_browser(sae, model, data, tmp_path / "page", BrowseOptions(limit=12, latents=4, top=3)).read_text()
    assert "% of images" in text and ("CLS token" if tokens == "cls" else "mean patch token") in text


def test_the_tab_gives_an_image_sae_its_value_on_its_own_token(model, photo):
    """A CLS-token SAE in the tab: shown on the patches, and the note gives the latent on the CLS token (plain
    hook and definition)."""
    sae = make_sae("relu")
    sae.cfg = dataclasses.replace(sae.cfg, tokens="cls")
    x = model.preprocess([photo])
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=f"blocks.{BLOCK}.hook_resid_post")
    row = cache[f"blocks.{BLOCK}.hook_resid_post"][0, model.token_layout(BLOCK).cls].double()
    ref = torch.relu((row * float(sae.scale[0]) - sae.b_dec[0].detach().double()) @ sae.W_enc[0].detach().double()
                     + sae.b_enc[0].detach().double())
    lat = int(torch.argmax(ref))
    v = SV.sae_view(model, photo, sae, latent=lat)
    assert f"on the CLS token, latent {lat} is {float(ref[lat]):.3g}" in v.note, v.note
    assert "shown on the patch tokens" in v.note
