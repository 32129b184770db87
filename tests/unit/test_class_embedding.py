"""Class embedding space (vilas2023): every metric against a slow reference written from its definition; the
streamed logit lens against the all-at-once computation; memories and perturbations against loops; bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vitscope.analysis.class_embedding as ce
from vitscope.models.config import ViTConfig
from vitscope.models.vit import HookedViT


# ----------------------------------------------------------------------------- references
def ref_rank(logits: np.ndarray, target: int) -> int:
    """Number of classes with a strictly larger logit than the target, by a loop."""
    return sum(1 for c in range(len(logits)) if logits[c] > logits[target])


def tiny(**kw) -> HookedViT:
    torch.manual_seed(0)
    cfg = dict(img_size=16, patch_size=4, embed_dim=16, depth=3, num_heads=2, num_classes=7)
    cfg.update(kw)
    return HookedViT(ViTConfig(**cfg)).eval().requires_grad_(False)


# ----------------------------------------------------------------------------- ranks and scores
def test_identifiability_matches_the_definition_on_random_logits():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 5, 11, generator=g)
    target = torch.randint(0, 11, (6, 5), generator=g)
    got = ce.identifiability(logits, target)
    for i in range(6):
        for t in range(5):
            r = ref_rank(logits[i, t].numpy(), int(target[i, t]))
            assert got[i, t].item() == pytest.approx(1 - r / 11)


def test_identifiability_hand_made_cases():
    # ties: classes tied with the true class do not count against it
    assert ce.identifiability(torch.tensor([[1.0, 1.0, 1.0, 0.0]]), torch.tensor([1])).tolist() == [1.0]
    assert ce.class_rank(torch.tensor([[2.0, 1.0, 2.0, 1.0]]), torch.tensor([3])).tolist() == [2]
    # the true class last: rank C - 1, score 1 / C
    assert ce.identifiability(torch.tensor([[3.0, 2.0, 1.0, 0.0]]), torch.tensor([3])).tolist() == [0.25]
    # a single token, a single row
    assert ce.identifiability(torch.tensor([0.0, 5.0, 1.0]), torch.tensor(1)).item() == 1.0
    with pytest.raises(ValueError, match="target classes"):
        ce.class_rank(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_token_and_image_rates_against_loops():
    rng = np.random.default_rng(0)
    ranks = rng.integers(0, 3, size=(9, 7))
    ranks[4] = 2                                                     # an image with no rank-0 token
    per_image = [sum(1 for v in row if v == 0) / len(row) for row in ranks]
    assert ce.token_rate(ranks) == pytest.approx(sum(per_image) / len(per_image))
    assert ce.image_rate(ranks) == pytest.approx(sum(any(v == 0 for v in row) for row in ranks) / 9)


def test_change_rates_and_residual_match_against_loops():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    b[0, 0] = a[0, 0]                                                # equal: not a rise
    rises = sum(1 for i in range(5) for j in range(4) if b[i, j] > a[i, j])
    assert ce.block_change_rate(a, b) == pytest.approx(rises / 20)
    assert ce.branch_change_rate(b, a) == pytest.approx(rises / 20)
    o, at, m, p = (rng.integers(0, 3, size=30) for _ in range(4))
    got = ce.residual_match(o, at, m, p)
    assert got["match_attn"] == pytest.approx(np.mean([x == y for x, y in zip(o, at)]))
    assert got["composition"] == pytest.approx(
        np.mean([x != w and x != y and x != z for x, y, z, w in zip(o, at, m, p)]))
    assert got["composition_seed001"] == pytest.approx(np.mean([x != w and x != y for x, y, w in zip(o, at, p)]))


# ----------------------------------------------------------------------------- statistics
def test_permutation_test_is_seeded_and_agrees_with_scipy():
    from scipy.stats import permutation_test as sp_perm

    rng = np.random.default_rng(3)
    v = np.concatenate([rng.normal(0.2, 1, 60), rng.normal(0, 1, 90)])
    c = np.r_[np.ones(60, bool), np.zeros(90, bool)]
    d1, p1, n1 = ce.permutation_test(v, c, 300, seed=5)
    d2, p2, n2 = ce.permutation_test(v, c, 300, seed=5)
    _, _, n3 = ce.permutation_test(v, c, 300, seed=6)
    assert (d1, p1) == (d2, p2) and np.array_equal(n1, n2) and not np.array_equal(n1, n3)
    assert d1 == pytest.approx(v[c].mean() - v[~c].mean())
    ref = sp_perm((v[c], v[~c]), lambda x, y: x.mean() - y.mean(), n_resamples=4000, alternative="greater",
                  random_state=0, vectorized=False)
    _, p_many, _ = ce.permutation_test(v, c, 4000, seed=1)
    assert p_many == pytest.approx(ref.pvalue, abs=0.03)
    # separated samples: no permutation beats the observed difference
    assert ce.permutation_test(np.r_[np.ones(20) * 5, np.zeros(20)], np.r_[np.ones(20), np.zeros(20)].astype(bool),
                               100)[1] == 0.0


def test_wilcoxon_greater_is_scipys_one_sided_test():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    x, y = rng.normal(0.3, 1, 50), rng.normal(0, 1, 50)
    assert ce.wilcoxon_greater(x, y) == pytest.approx(wilcoxon(x, y, alternative="greater").pvalue)
    assert ce.wilcoxon_greater(x, x) == 1.0


# ----------------------------------------------------------------------------- the streamed lens
def reference_lens(model, x, y):
    """All at once: cache every site, project with the model's head, ranks by a loop over classes."""
    names = [f"blocks.{b}.{h}" for b in range(model.cfg.depth) for h in ce.SITES.values()]
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=names)
    out = {}
    for site, h in ce.SITES.items():
        for b in range(model.cfg.depth):
            logits = model.project_to_logits(cache[f"blocks.{b}.{h}"]).numpy()          # N, T, C
            ranks = np.array([[ref_rank(logits[i, t], int(y[i])) for t in range(logits.shape[1])]
                              for i in range(len(y))])
            out[(site, b)] = (ranks, logits[np.arange(len(y)), :, y.numpy()], logits.argmax(-1))
    return out


@pytest.mark.parametrize("kw", [
    dict(),
    dict(num_registers=2, register_block=1, cls_block=2, register_location="end"),      # late CLS and registers
    dict(distill_token=True, head="distilled"),                                          # DeiT-distilled
    dict(class_token=False, global_pool="avg", fc_norm=True, final_norm=False),          # GAP, no CLS
], ids=["plain", "late_tokens", "distilled", "gap"])
def test_streamed_lens_equals_the_all_at_once_computation(kw, tmp_path):
    model = tiny(**kw)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(10, 3, 16, 16, generator=g)
    y = torch.randint(0, 7, (10,), generator=g)
    ref = reference_lens(model, x, y)
    batches = [(x[i:i + 4], y[i:i + 4]) for i in range(0, 10, 4)]                  # 3 batches: 4, 4, 2
    res = ce.logit_lens(model, batches, record=True, topk=3)
    disk = ce.logit_lens(model, batches, record=tmp_path / "rec", topk=3)
    D = model.cfg.depth
    for (site, b), (ranks, true, top1) in ref.items():
        assert np.array_equal(res.ranks(site, b), ranks)
        assert np.array_equal(disk.ranks(site, b), ranks)
        np.testing.assert_allclose(res.true_logits(site, b), true, rtol=1e-5, atol=1e-5)
        assert np.array_equal(res.topk_classes(site, b)[..., 0], top1)
        np.testing.assert_allclose(res.mean_score(site, b), (1 - ranks / 7).mean(0), atol=1e-12)
        lay = model.token_layout(b)
        pr = ranks[:, lay.patches]
        assert res.token_rate(site, b) == pytest.approx(np.mean([np.mean(r == 0) for r in pr]))
        assert res.image_rate(site, b) == pytest.approx(np.mean([np.any(r == 0) for r in pr]))
    # change rates over the patch tokens present at both blocks (tokens entering later are left out)
    for b in range(1, D):
        pp, pc = model.token_layout(b - 1).patches, model.token_layout(b).patches
        t_prev, t_cur = ref[("resid", b - 1)][1][:, pp], ref[("resid", b)][1][:, pc]
        hits, n = res.counts["block_change:patches"][b]
        assert hits / n == pytest.approx(ce.block_change_rate(t_prev, t_cur))
        hits, n = res.counts["attn_change:patches"][b]
        assert hits / n == pytest.approx(ce.branch_change_rate(ref[("attn", b)][1][:, pc], t_prev))
        lp, lc = model.token_layout(b - 1), model.token_layout(b)
        if lp.n_tokens == lc.n_tokens:                                             # same tokens at both blocks
            m = ce.residual_match(ref[("resid", b)][2], ref[("attn", b)][2], ref[("mlp", b)][2],
                                  ref[("resid", b - 1)][2])
            for k, v in m.items():
                hits, n = res.counts[k][b]
                assert hits / n == pytest.approx(v)
    assert res.accuracy == pytest.approx(float((model(x).argmax(-1) == y).float().mean()))


def test_branches_before_layerscale_on_request():
    model = tiny(layer_scale_init=0.1)
    x, y = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter="blocks.1.hook_mlp_out")
    pre = model.project_to_logits(cache["blocks.1.hook_mlp_out"] / model.blocks[1].ls2.gamma).numpy()
    post = model.project_to_logits(cache["blocks.1.hook_mlp_out"]).numpy()
    for prescale, logits in ((True, pre), (False, post)):
        res = ce.logit_lens(model, [(x, y)], sites=("mlp",), record=True, prescale=prescale)
        ref = np.array([[ref_rank(logits[i, t], int(y[i])) for t in range(logits.shape[1])] for i in range(3)])
        assert np.array_equal(res.ranks("mlp", 1), ref)
        np.testing.assert_allclose(res.true_logits("mlp", 1), logits[np.arange(3), :, y.numpy()], rtol=1e-5)


def test_explicit_class_embeddings_reproduce_the_models_own_head():
    model = tiny()
    own = ce.ClassProjection.from_model(model)
    given = ce.ClassProjection.from_model(model, weight=model.head.weight.detach(), bias=model.head.bias.detach())
    h = torch.randn(2, 5, 16)
    torch.testing.assert_close(given(h), own(h))
    # a CLIP-like projection applied after the norm: weight (C, P) over projected vectors
    P = torch.randn(16, 6)
    W = torch.randn(4, 6)
    proj = ce.ClassProjection.from_model(model, weight=W, proj=P)
    torch.testing.assert_close(proj(h), model.ln_final(h) @ P @ W.T)
    assert proj.num_classes == 4


# ----------------------------------------------------------------------------- bad input
def test_bad_input_gives_one_clear_line():
    headless = tiny(head="none")
    with pytest.raises(ValueError, match="no classification head.*class embeddings"):
        ce.LogitLens(headless)
    ce.LogitLens(headless, ce.ClassProjection.from_model(headless, weight=torch.randn(3, 16)))   # works when given
    model = tiny()
    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(ValueError, match="outside the head's 7 classes"):
        ce.logit_lens(model, [(x, torch.tensor([0, 7]))])
    with pytest.raises(ValueError, match="no class labels"):
        ce.logit_lens(model, [(x, torch.tensor([-1, -1]))])
    with pytest.raises(ValueError, match="token grid"):
        ce.logit_lens(model, [(x, torch.tensor([0, 1]), None, torch.ones(2, 5, 5, dtype=torch.bool))], record=True)
    with pytest.raises(ValueError, match="token grid"):
        ce.token_drop_rows(model, [(x, torch.tensor([0, 1]), torch.ones(2, 3, dtype=torch.bool))])
    with pytest.raises(ValueError, match="outside the head's 7 classes"):
        ce.attention_perturbation_rows(model, [(x, torch.tensor([9, 1]))])
    res = ce.logit_lens(model, [(x, torch.tensor([0, 1]))], record=True)
    with pytest.raises(ValueError, match="need object masks"):
        ce.class_context_rows(res)


# ----------------------------------------------------------------------------- memories
def test_class_value_agreement_is_the_best_cosine_per_class():
    g = torch.Generator().manual_seed(0)
    E, W = torch.randn(5, 8, generator=g), torch.randn(8, 12, generator=g)
    got = ce.class_value_agreement(E, W)
    for c in range(5):
        best = max(float(E[c] @ W[:, m] / (E[c].norm() * W[:, m].norm())) for m in range(12))
        assert got[c].item() == pytest.approx(best, abs=1e-6)


def test_memory_agreement_against_a_loop():
    model = tiny()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(6, 3, 16, 16, generator=g)
    y = torch.randint(0, 7, (6,), generator=g)
    res = ce.memory_agreement(model, [(x[:4], y[:4]), (x[4:], y[4:])], k=3, seed=4)
    again = ce.memory_agreement(model, [(x, y)], k=3, seed=4)
    names = [f"blocks.{b}.{h}" for b in range(3) for h in ("mlp.hook_pre", "hook_mlp_out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=names)
    rand = ce.random_classes(7, 4)
    for b in range(3):
        P = (model.head.weight @ model.blocks[b].mlp.fc2.weight).detach().numpy()        # C, M
        keys = cache[f"blocks.{b}.mlp.hook_pre"].numpy()                               # N, T, M
        out_top = model.project_to_logits(cache[f"blocks.{b}.hook_mlp_out"]).argmax(-1).numpy()
        agree = np.zeros((7, 2))
        agree_r = np.zeros((7, 2))
        compose = [0, 0]
        for i in range(6):
            mem = set(np.argsort(-P[y[i]])[:3])
            mem_r = set(np.argsort(-P[rand[y[i]]])[:3])
            for t in range(keys.shape[1]):
                top = set(np.argsort(-keys[i, t])[:3])
                agree[y[i]] += (bool(top & mem), 1)
                agree_r[y[i]] += (bool(top & mem_r), 1)
                compose[0] += any(P[:, m].argmax() == out_top[i, t] for m in top)
                compose[1] += 1
        with np.errstate(invalid="ignore"):
            np.testing.assert_allclose(res.agreement_rate("mlp", b), 100 * agree[:, 0] / agree[:, 1])
            np.testing.assert_allclose(res.agreement_rate("mlp", b, "random"), 100 * agree_r[:, 0] / agree_r[:, 1])
            np.testing.assert_allclose(again.agreement_rate("mlp", b), res.agreement_rate("mlp", b))
        assert tuple(res.compose[("mlp", b)]) == tuple(compose)


# ----------------------------------------------------------------------------- perturbations
def test_token_dropping_against_one_image_at_a_time():
    from vitscope.hooks import drop_patches

    model = tiny()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 3, 16, 16, generator=g)
    y = torch.randint(0, 7, (5,), generator=g)
    masks = torch.rand(5, 16, generator=g) < 0.3
    masks[0] = False                                                             # no object: left out
    rows = {r["perturbation"]: r for r in ce.token_drop_rows(model, [(x, y, masks)])}
    L = model.cfg.depth - 1
    for kind, keep_class in (("no_context", True), ("no_class", False)):
        shares, base = [], []
        for i in range(1, 5):
            drop = (~masks[i]) if keep_class else masks[i]
            with torch.no_grad():
                with model.hooks(drop_patches(model, drop.nonzero().flatten().tolist())):
                    _, cache = model.run_with_cache(x[i:i + 1], names_filter=f"blocks.{L}.hook_resid_post")
                logits = model.project_to_logits(cache[f"blocks.{L}.hook_resid_post"])[0, 1:].numpy()
                shares.append(np.mean([ref_rank(lg, int(y[i])) == 0 for lg in logits]))
                _, full = model.run_with_cache(x[i:i + 1], names_filter=f"blocks.{L}.hook_resid_post")
                fl = model.project_to_logits(full[f"blocks.{L}.hook_resid_post"])[0, 1:].numpy()
                sel = masks[i].numpy() if keep_class else ~masks[i].numpy()
                base += [ref_rank(lg, int(y[i])) == 0 for lg in fl[sel]]
        assert rows[kind]["value"] == pytest.approx(np.mean(shares))
        assert rows[kind]["baseline"] == pytest.approx(np.mean(base))
        assert rows[kind]["n_images"] == 4


def test_attention_perturbation_rows_unperturbed_equals_the_lens():
    model = tiny()
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(6, 3, 16, 16, generator=g), torch.randint(0, 7, (6,), generator=g)
    rows = ce.attention_perturbation_rows(model, [(x, y)])
    rate = {r["perturbation"]: r["value"] for r in rows if r["metric"] == "identifiable_rate"}
    assert rate["none"] == pytest.approx(ce.logit_lens(model, [(x, y)], sites=("resid",)).token_rate())
    assert set(rate) == {"none", "self_only", "no_cls"}
