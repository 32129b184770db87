"""Attention maps, queries, head fusion, DINO mass thresholding: against loop references from the definitions."""
import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.attention import maps as M
from vitscope.analysis.attention import tokens as TK

CONFIGS = {
    "plain": dict(),
    "registers": dict(num_registers=2),
    "late": dict(num_registers=2, register_location="end", register_block=1, cls_block=2),
    "distilled": dict(distill_token=True, head="distilled"),
}


def make_model(kind, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, num_classes=10,
                    **{**CONFIGS[kind], **kw})
    return HookedViT(cfg).eval()


def random_pattern(B, H, T, seed=0, temp=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, T, generator=g) * temp).softmax(-1)


def ref_query_index(layout, query):
    """Independent of tokens.resolve_query: straight from the layout fields."""
    rows, cols = layout.grid
    if isinstance(query, tuple):
        return layout.patches.start + query[0] * cols + query[1]
    if query == "cls":
        return layout.cls
    if query == "dist":
        return layout.dist
    if query.startswith("reg"):
        return layout.registers[int(query[3:])]
    if query == "centre":
        return layout.patches.start + ((rows - 1) // 2) * cols + (cols - 1) // 2
    raise AssertionError(query)


def ref_map(P, layout, query, fusion=None, renorm=False):
    P = P.numpy().astype(np.float64)
    B, H, T, _ = P.shape
    rows, cols = layout.grid
    p0 = layout.patches.start
    out = np.zeros((B, H, rows, cols))
    for b in range(B):
        for h in range(H):
            for r in range(rows):
                for c in range(cols):
                    k = p0 + r * cols + c
                    if query == "mean":
                        out[b, h, r, c] = sum(P[b, h, q, k] for q in range(p0, p0 + rows * cols)) / (rows * cols)
                    else:
                        out[b, h, r, c] = P[b, h, ref_query_index(layout, query), k]
    if fusion is not None:
        out = {"mean": out.mean(1), "max": out.max(1), "min": out.min(1), "sum": out.sum(1)}[fusion]
    if renorm:
        s = out.sum(axis=(-2, -1), keepdims=True)
        out = out / np.where(s == 0, 1, s)
    return out


def ref_mass_threshold(values, mass):
    """DINO: ascending sort, normalise, cumulative sum, keep where cum > 1 - mass (plain loops)."""
    flat = list(values.reshape(-1))
    tot = sum(flat)
    order = sorted(range(len(flat)), key=lambda i: flat[i])
    keep = [False] * len(flat)
    cum = 0.0
    for i in order:
        cum += flat[i] / tot
        keep[i] = cum > 1 - mass
    return np.array(keep).reshape(values.shape)


@pytest.mark.parametrize("kind", list(CONFIGS))
@pytest.mark.parametrize("B", [1, 3])
def test_attention_map_matches_reference(kind, B):
    model = make_model(kind)
    for block in range(4):
        lay = model.token_layout(block)
        P = random_pattern(B, 4, lay.n_tokens, seed=block)
        queries = ["mean", "centre", (0, 3), (2, 1)]
        if lay.cls is not None:
            queries.append("cls")
        if lay.dist is not None:
            queries.append("dist")
        queries += [f"reg{k}" for k in range(len(lay.registers))]
        for q in queries:
            got = M.attention_map(P, lay, q)
            np.testing.assert_allclose(got.numpy(), ref_map(P, lay, q), atol=1e-6)
            for fusion in ("mean", "max", "min", "sum"):
                got = M.attention_map(P, lay, q, fusion=fusion, renormalize=True)
                np.testing.assert_allclose(got.numpy(), ref_map(P, lay, q, fusion, True), atol=1e-6)
        got = M.attention_map(P, lay, "centre", heads=[2, 0])
        np.testing.assert_allclose(got.numpy(), ref_map(P, lay, "centre")[:, [2, 0]], atol=1e-6)


def test_mass_threshold_known_answers():
    m = torch.tensor([[0.5, 0.3], [0.1, 0.1]])
    assert M.mass_threshold(m, 0.6).tolist() == [[True, True], [False, False]]
    assert M.mass_threshold(m, 0.45).tolist() == [[True, False], [False, False]]
    assert M.mass_threshold(m, 1.0).all()
    # unnormalised input: only relative mass matters
    assert M.mass_threshold(m * 7, 0.6).tolist() == [[True, True], [False, False]]


@pytest.mark.parametrize("mass", [0.1, 0.6, 0.9])
def test_mass_threshold_random_matches_reference(mass):
    g = torch.Generator().manual_seed(1)
    maps = torch.rand(3, 2, 5, 6, generator=g)
    got = M.mass_threshold(maps, mass)
    for b in range(3):
        for h in range(2):
            np.testing.assert_array_equal(got[b, h].numpy(), ref_mass_threshold(maps[b, h].double().numpy(), mass))
    # the kept mass is at least `mass`, and dropping the smallest kept entry falls below it
    total = maps.sum((-2, -1))
    kept = (maps * got).sum((-2, -1)) / total
    assert (kept >= mass - 1e-6).all()
    smallest_kept = torch.where(got, maps, torch.full_like(maps, float("inf"))).amin((-2, -1)) / total
    assert (kept - smallest_kept < mass + 1e-6).all()


def test_model_maps_equal_pure_function_on_cached_patterns():
    model = make_model("late")
    x = torch.randn(2, 3, 32, 32)
    _, cache = model.run_with_cache(x, names_filter="blocks.*.attn.hook_pattern")
    got = M.attention_maps_from_model(model, x, block=-1, query="reg1", fusion="max")
    want = ref_map(cache["blocks.3.attn.hook_pattern"], model.token_layout(3), "reg1", "max")
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    blocks, grid = M.block_head_maps(model, x, query="cls")
    assert blocks == [2, 3]                                  # CLS enters before block 2
    assert grid.shape == (2, 2, 4, 4, 4)
    np.testing.assert_allclose(grid[:, 0].numpy(), ref_map(cache["blocks.2.attn.hook_pattern"],
                                                           model.token_layout(2), "cls"), atol=1e-6)


@pytest.mark.parametrize("query,block,entry", [("cls", 1, 2), ("reg0", 0, 1), ("reg1", 0, 1)])
def test_token_before_it_enters_is_one_clear_error(query, block, entry):
    model = make_model("late")
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=f"enters the sequence before block {entry}") as e:
        M.attention_maps_from_model(model, x, block=block, query=query)
    assert f"block {block}" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match=f"before block {entry}"):
        M.block_head_maps(model, x, blocks=[block], query=query)


def test_query_errors():
    model = make_model("plain")
    lay = model.token_layout(1)
    with pytest.raises(ValueError, match="no register tokens"):
        TK.resolve_query("reg0", lay, model.cfg)
    with pytest.raises(ValueError, match="outside the 4x4"):
        TK.resolve_query((4, 0), lay)
    with pytest.raises(ValueError, match="unknown query"):
        TK.parse_query("banana")
    with pytest.raises(ValueError, match="no distillation"):
        TK.resolve_query("dist", lay, model.cfg)
    m2 = make_model("registers")
    with pytest.raises(ValueError, match="register 5 does not exist"):
        TK.resolve_query("reg5", m2.token_layout(0), m2.cfg)
    with pytest.raises(ValueError, match="tokens but the layout"):
        M.attention_map(torch.rand(1, 2, 7, 7), lay)
    assert TK.parse_query("2, 3") == (2, 3)


def test_token_names_and_index_map():
    model = make_model("late")
    l0, l1, l2 = (model.token_layout(b) for b in range(3))
    assert TK.token_names(l2)[:2] == ["cls", "patch0"] and TK.token_names(l2)[-2:] == ["reg0", "reg1"]
    assert TK.index_map(l0, l1) == list(range(16))
    assert TK.index_map(l1, l2) == list(range(1, 19))
    assert TK.patch_position("centre", (4, 5)) == (1, 2)
    assert TK.patch_position("bottom", (4, 5)) == (3, 2)
