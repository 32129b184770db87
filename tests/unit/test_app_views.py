"""The web app's view functions, model cache and upload validation, called directly (no server).

Numbers are checked against computations written here from the definitions (attention from the queries and
keys, rollout as a plain loop, distance as a double loop, the logit lens by hand), not only shapes.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import vitscope as vs
from vitscope.app import views as V
from vitscope.app.models import ModelCache
from vitscope.app.uploads import ImageCache, UploadError, open_upload

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def demo():
    return vs.load_model("demo-vit")


@pytest.fixture(scope="module")
def reg4():
    return vs.load_model("demo-vit-reg4")


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    a = np.zeros((90, 120, 3), np.uint8) + np.array([40, 90, 200], np.uint8)
    a[30:60, 40:80] = [240, 200, 10]
    a = np.clip(a.astype(int) + rng.integers(-20, 20, a.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(a)


def _pattern_from_qk(model, x, block):
    """softmax(q k^T / sqrt(Dh)) from the per-head queries and keys: (H, T, T)."""
    names = [f"blocks.{block}.attn.hook_q", f"blocks.{block}.attn.hook_k"]
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=names)
    q, k = cache[names[0]][0].double(), cache[names[1]][0].double()          # T, H, Dh
    s = torch.einsum("qhd,khd->hqk", q, k) / q.shape[-1] ** 0.5
    return s.softmax(-1)


def test_attention_view_equals_softmax_of_queries_and_keys(demo, photo):
    x, _ = V.model_input(demo, photo)
    for block, query in [(5, "cls"), (2, (3, 4))]:
        v = V.attention_view(demo, photo, block=block, head="mean", query=query)
        A = _pattern_from_qk(demo, x, block)
        lay = demo.token_layout(block)
        row = lay.cls if query == "cls" else lay.patches.start + query[0] * lay.grid[1] + query[1]
        ref = A[:, row, lay.patches].reshape(A.shape[0], *lay.grid).numpy()
        np.testing.assert_allclose(v.arrays["maps"], ref, atol=1e-5)
        np.testing.assert_allclose(v.arrays["shown"], ref.mean(0), atol=1e-5)
        assert v.figure.shape == (448, 448, 3) and v.figure.dtype == np.uint8
        assert v.images["heads"].ndim == 3
        # the table holds the same numbers
        t = v.table[(v.table["head"] == "3")]
        np.testing.assert_allclose(t["value"].to_numpy().reshape(lay.grid), ref[3], atol=1e-5)
    v = V.attention_view(demo, photo, block=5, head=2, query="cls")
    np.testing.assert_allclose(v.arrays["shown"], v.arrays["maps"][2])
    v = V.attention_view(demo, photo, block=5, head="max", query="cls")
    np.testing.assert_allclose(v.arrays["shown"], v.arrays["maps"].max(0))


def test_attention_view_token_not_yet_there_is_a_note(reg4, photo):
    v = V.attention_view(reg4, photo, block=1, query="cls")
    assert v.figure is None and "block 6" in v.note
    v = V.attention_view(reg4, photo, block=3, query="reg2")
    assert v.figure is not None
    with pytest.raises(ValueError, match="head 9 does not exist"):
        V.attention_view(reg4, photo, block=7, head=9)


def test_rollout_view_equals_a_plain_loop(demo, photo):
    x, _ = V.model_input(demo, photo)
    v = V.rollout_view(demo, photo, method="rollout")
    lay = demo.token_layout(0)
    J = torch.eye(lay.n_tokens, dtype=torch.float64)
    for b in range(demo.cfg.depth):
        A = _pattern_from_qk(demo, x, b).mean(0)
        A = A + torch.eye(A.shape[0], dtype=A.dtype)
        A = A / A.sum(-1, keepdim=True)
        J = A @ J
    m = J[lay.cls, lay.patches]
    ref = (m / m.max()).reshape(lay.grid).numpy()
    np.testing.assert_allclose(v.arrays["map"], ref, atol=1e-5)


def test_relevance_view_follows_the_definition(demo, photo):
    """Chefer: R <- R + mean_h(clamp(dA * A, 0)) R with dA the gradient of the explained logit."""
    x, _ = V.model_input(demo, photo)
    v = V.rollout_view(demo, photo, method="chefer", target=3)
    assert v.meta["target"] == 3 and "3: cross" in v.note
    store = {}

    def keep(t, hook):
        t.retain_grad()
        store[int(hook.name.split(".")[1])] = t

    with torch.enable_grad():
        demo.zero_grad()
        with demo.hooks([(f"blocks.{b}.attn.hook_pattern", keep) for b in range(demo.cfg.depth)]):
            logits = demo(x.clone().requires_grad_(True))
        logits[0, 3].backward()
    lay = demo.token_layout(0)
    R = torch.eye(lay.n_tokens, dtype=torch.float64)
    for b in range(demo.cfg.depth):
        A, g = store[b][0].detach().double(), store[b].grad[0].double()
        R = R + (g * A).clamp(min=0).mean(0) @ R
    m = R[lay.cls, lay.patches]
    np.testing.assert_allclose(v.arrays["map"], (m / m.max()).reshape(lay.grid).numpy(), atol=1e-4)
    demo.zero_grad(set_to_none=True)
    pred = V.rollout_view(demo, photo, method="grad_rollout")
    with torch.no_grad():
        assert pred.meta["target"] == int(demo(x).argmax())


def test_tokens_view_at_a_block_before_cls(reg4, photo):
    x, _ = V.model_input(reg4, photo)
    v = V.tokens_view(reg4, photo, block=4)
    assert sorted(k for k in v.arrays) == ["maps_reg0", "maps_reg1", "maps_reg2", "maps_reg3"]
    assert "CLS token enters the sequence before block 6" in v.note
    A = _pattern_from_qk(reg4, x, 4)
    lay = reg4.token_layout(4)
    ref = A[:, lay.registers[1], lay.patches].reshape(A.shape[0], *lay.grid).numpy()
    np.testing.assert_allclose(v.arrays["maps_reg1"], ref, atol=1e-5)
    early = V.tokens_view(reg4, photo, block=1)
    assert early.figure is None and "registers enter the sequence before block 3" in early.note
    assert set(V.tokens_view(reg4, photo, block=7).arrays) == {"maps_cls", "maps_reg0", "maps_reg1", "maps_reg2",
                                                                "maps_reg3"}


def test_distance_view_equals_a_double_loop(reg4, photo):
    x, _ = V.model_input(reg4, photo)
    v = V.distance_view(reg4, photo, variant="A")
    d = v.arrays["distance"]
    assert d.shape == (reg4.cfg.depth, reg4.cfg.num_heads)
    rows, cols = reg4.token_layout(0).grid
    for b, h in [(1, 0), (7, 5)]:                # before and after the registers and CLS enter
        lay = reg4.token_layout(b)
        A = _pattern_from_qk(reg4, x, b)[h][lay.patches, lay.patches].numpy()
        tot = 0.0
        for i in range(rows * cols):
            w = A[i] / A[i].sum()
            tot += sum(w[j] * np.hypot((i // cols - j // cols) / (rows - 1), (i % cols - j % cols) / (cols - 1))
                       for j in range(rows * cols))
        assert d[b, h] == pytest.approx(tot / (rows * cols), abs=1e-5)
    assert set(v.table.columns) >= {"model", "block", "head", "metric", "value"}


def test_logit_lens_view_by_hand(reg4, photo):
    x, _ = V.model_input(reg4, photo)
    b = 4
    v = V.logit_lens_view(reg4, photo, block=b)
    with torch.no_grad():
        logits, cache = reg4.run_with_cache(x, names_filter=[f"blocks.{b}.hook_resid_post"])
        h = cache[f"blocks.{b}.hook_resid_post"][0]
        lay = reg4.token_layout(b)
        z = torch.nn.functional.layer_norm(h[lay.patches], (h.shape[-1],), reg4.ln_final.weight, reg4.ln_final.bias,
                                           reg4.cfg.norm_eps)
        pl = z @ reg4.head.weight.T + reg4.head.bias
    np.testing.assert_allclose(v.arrays["patch_logits"].reshape(-1, pl.shape[-1]), pl.numpy(), atol=1e-4)
    np.testing.assert_array_equal(v.arrays["top_class"].ravel(), pl.argmax(-1).numpy())
    assert v.meta["prediction"] == int(logits.argmax())
    agree = v.arrays["agreement_per_block"]
    assert agree.shape == (reg4.cfg.depth,) and 0 <= agree.min() and agree.max() <= 1
    assert v.figure.shape[1] == 448 and v.figure.shape[0] > 448       # the map and its legend


def test_predictions_view_is_softmax_top5(demo, photo):
    x, _ = V.model_input(demo, photo)
    v = V.predictions_view(demo, photo)
    with torch.no_grad():
        p = demo(x)[0].double().softmax(-1).numpy()
    order = np.argsort(-p)[:5]
    np.testing.assert_array_equal(v.table["class"].to_numpy(), order)
    np.testing.assert_allclose(v.table["probability"].to_numpy(), p[order], atol=1e-6)
    assert list(v.label.values()) == pytest.approx(list(p[order]), abs=1e-6)
    assert list(v.label)[0].startswith(f"{order[0]}: ")                 # class names come from the model


def test_save_view_writes_figure_and_numbers(demo, photo, tmp_path):
    v = V.attention_view(demo, photo, block=3)
    files = V.save_view(v, tmp_path, "att")
    names = sorted(p.name for p in files)
    assert names == ["att.csv", "att.json", "att.maps.npy", "att.png", "att.shown.npy", "att_heads.png"]
    np.testing.assert_array_equal(np.load(tmp_path / "att.maps.npy"), v.arrays["maps"])
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "att.png")), v.figure)


def test_patch_at_and_display_size():
    assert V.display_size((64, 64)) == (448, 448)
    assert V.display_size((224, 112)) == (448, 224)
    assert V.patch_at(0, 0, (448, 448), (8, 8)) == (0, 0)
    assert V.patch_at(447, 447, (448, 448), (8, 8)) == (7, 7)
    assert V.patch_at(57, 5, (448, 448), (8, 8)) == (0, 1)              # x is the column, y the row
    assert V.patch_at(5, 57, (448, 448), (8, 8)) == (1, 0)


# ----------------------------------------------------------------------------- model cache
def test_model_cache_is_bounded_lru():
    cache = ModelCache(capacity=2, device="cpu")
    a = cache.get("demo-vit")
    cache.get("demo-vit-reg4")
    assert cache.get("demo-vit") is a and cache.loads == 2             # cached, not reloaded
    cache.get("demo-vit", random=True)                                 # evicts demo-vit-reg4 (least recent)
    assert cache.names() == ["demo-vit", "demo-vit"] and ("demo-vit-reg4", False) not in cache
    r = cache.get("demo-vit", random=True).model
    assert not torch.equal(r.head.weight, a.model.head.weight)
    cache.get("demo-vit-reg4")
    assert cache.loads == 4
    with pytest.raises(RuntimeError, match="could not load model 'no-such-model'"):
        cache.get("no-such-model")
    with pytest.raises(ValueError, match="no model chosen"):
        cache.get("  ")


# ----------------------------------------------------------------------------- uploads
def _png_header_only(w: int, h: int) -> bytes:
    """A PNG that declares w x h pixels and holds almost nothing (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def bad_uploads(folder):
    """(name, bytes) of every kind of bad upload the app must answer with a message."""
    import io

    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    noise.save(buf, "PNG")
    return {
        "text.png": b"this is not an image at all\n" * 10,
        "empty.png": b"",
        "bomb.png": _png_header_only(30000, 30000),
        "truncated.png": buf.getvalue()[: len(buf.getvalue()) // 2],
    }


def test_bad_uploads_are_one_clear_error(tmp_path):
    for name, data in bad_uploads(tmp_path).items():
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(UploadError) as e:
            open_upload(p, [tmp_path])
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 200
        key = {"text.png": "not an image", "empty.png": "empty", "bomb.png": "megapixels",
               "truncated.png": "truncated or corrupt"}[name]
        assert key in msg, (name, msg)
    p = tmp_path / "ok.png"
    Image.new("RGB", (300, 200), (1, 2, 3)).save(p)
    with pytest.raises(UploadError, match="limit is 0 MiB|MiB"):
        open_upload(p, [tmp_path], max_bytes=100)
    with pytest.raises(UploadError, match="megapixels"):
        open_upload(p, [tmp_path], max_pixels=10_000)


def test_uploads_outside_the_app_folder_are_not_read(tmp_path):
    inside, outside = tmp_path / "app", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    Image.new("RGB", (10, 10)).save(outside / "x.png")
    for path in (outside / "x.png", inside / ".." / "elsewhere" / "x.png"):
        with pytest.raises(UploadError, match="reads only files uploaded"):
            open_upload(path, [inside])


def test_16bit_and_cmyk_give_the_right_rgb(tmp_path):
    g = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20)
    Image.fromarray(g).save(tmp_path / "g16.png")                      # mode I;16
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    rgb = np.asarray(open_upload(tmp_path / "g16.png", [tmp_path]))
    assert rgb.shape == (48, 64, 3)
    np.testing.assert_allclose(rgb[..., 0].astype(float), np.clip(g / 65535 * 255, 0, 255), atol=1.0)
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)   # pure red in CMYK
    rgb = np.asarray(open_upload(tmp_path / "cmyk.jpg", [tmp_path])).astype(int)
    assert rgb.shape == (30, 40, 3)
    assert rgb[..., 0].mean() > 230 and rgb[..., 1].mean() < 30 and rgb[..., 2].mean() < 30
    cache = ImageCache(capacity=1)
    a = cache.get(tmp_path / "cmyk.jpg", [tmp_path])
    assert cache.get(tmp_path / "cmyk.jpg", [tmp_path]) is a
