"""Ablations against plain loops of ``run_with_hooks`` written here: per head and per MLP (zero, mean per position
or global, resample), mean-ablating every head of a block = that block's attention output replaced by its mean, and
the iterative pruning curve = a greedy loop."""
import numpy as np
import pytest
import torch

from vitscope.analysis.patching.ablation import (AblateOptions, Ablation, ablate_components, ablated_logits,
                                                 derangement, evaluate, prune_heads, reference_means)
from vitscope.models import HookedViT, ViTConfig


def _model(tiny_cfg_kwargs, **kw):
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(**{**tiny_cfg_kwargs, "depth": 2, **kw})).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return m


def _data(n=10):
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loop(m, x, y, method, mean_over="position", seed=0, ref=None):
    """{(block, kind, head): (accuracy %, mean true logit)} by one run_with_hooks per component."""
    L, H = m.cfg.depth, m.cfg.num_heads
    idx = torch.arange(len(y))
    with torch.no_grad():
        _, cache = m.run_with_cache(x)
        _, rcache = m.run_with_cache(x if ref is None else ref)
        perm = derangement(len(y), seed)
        out = {}
        for b in range(L):
            for kind, h in [("head", h) for h in range(H)] + [("mlp", None)]:
                name = f"blocks.{b}.attn.hook_z" if kind == "head" else f"blocks.{b}.hook_mlp_out"
                if method == "zero":
                    v = torch.zeros_like(cache[name])
                elif method == "mean":
                    v = rcache[name].mean(0, keepdim=True)
                    if mean_over == "global":
                        v = v.mean(1, keepdim=True)
                    v = v.expand_as(cache[name])
                else:
                    v = cache[name][torch.as_tensor(perm)]

                def fn(a, hook, v=v, h=h):
                    a = a.clone()
                    if h is None:
                        a[:] = v
                    else:
                        a[:, :, h] = v[:, :, h]
                    return a
                lg = m.run_with_hooks(x, fwd_hooks=[(name, fn)])
                out[(b, kind, h)] = ((lg.argmax(-1) == y).double().mean().item() * 100, lg[idx, y].mean().item())
    return out


@pytest.mark.parametrize("method, mean_over", [("zero", "position"), ("mean", "position"), ("mean", "global"),
                                               ("resample", "position")])
def test_each_component_equals_the_loop(method, mean_over, tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, num_registers=1, register_location="end", register_block=1, cls_block=1)
    x, y = _data()
    ref = torch.randn(6, 3, 32, 32)
    means = reference_means(m, ref, range(2), mean_over == "position", batch_size=4) if method == "mean" else None
    rows = ablate_components(m, x, y, method, "heads,mlps", means=means, batch_size=4)
    want = _loop(m, x, y, method, mean_over, ref=ref)
    got = {(r["block"], r["component"], r["head"]): r for r in rows if r["metric"].endswith("logit")}
    acc = {(r["block"], r["component"], r["head"]): r["value"] for r in rows if r["metric"].endswith("accuracy")}
    assert set(got) - {(None, "none", None)} == set(want)
    for k, (a, lg) in want.items():
        assert got[k]["value"] == pytest.approx(lg, abs=1e-4)
        assert acc[k] == pytest.approx(a)
    drops = {(r["block"], r["component"], r["head"]): r["value"] for r in rows if r["metric"].endswith("logit_drop")}
    assert {r["metric"] for r in rows} == {"accuracy", "logit"} | {f"{k}_{m}" for k in ("head", "mlp") for m in (
        "accuracy", "accuracy_drop", "logit", "logit_drop")}
    base = got[(None, "none", None)]["value"]
    for k in want:
        assert drops[k] == pytest.approx(base - got[k]["value"])


def test_mean_ablating_every_head_is_the_mean_attention_output(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs, layer_scale_init=0.4)
    x, _ = _data(6)
    ref = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        means = reference_means(m, ref, range(2), per_position=True, batch_size=3)
        _, rc = m.run_with_cache(ref, names_filter="blocks.1.hook_attn_out")
        mean_out = rc["blocks.1.hook_attn_out"].mean(0, keepdim=True)
        want = m.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_attn_out", lambda a, hook: mean_out.expand_as(a))])
        _, c = m.run_with_cache(x, names_filter="blocks.*.hook_resid_pre")
        resid = {b: c[f"blocks.{b}.hook_resid_pre"] for b in range(2)}
        abl = Ablation({1: torch.ones(1, 4, dtype=torch.bool)}, {}, 1)
        got = ablated_logits(m, resid, abl, means)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_pruning_curve_equals_a_greedy_loop(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    x, y = _data(6)
    curve = prune_heads(m, x, y, "zero", step=3, batch_size=4)
    idx = torch.arange(6)

    def score(heads):
        hooks = []
        for b in range(2):
            hs = [h for bb, h in heads if bb == b]
            if hs:
                def fn(a, hook, hs=hs):
                    a = a.clone()
                    a[:, :, hs] = 0
                    return a
                hooks.append((f"blocks.{b}.attn.hook_z", fn))
        lg = m.run_with_hooks(x, fwd_hooks=hooks)
        return (lg.argmax(-1) == y).double().mean().item() * 100, lg[idx, y].mean().item()

    with torch.no_grad():
        remaining, pruned, want = [(b, h) for b in range(2) for h in range(4)], [], []
        while remaining:
            lg = [score(pruned + [r])[1] for r in remaining]
            chosen = [remaining[i] for i in np.argsort(-np.array(lg), kind="stable")[:3]]
            pruned += chosen
            remaining = [r for r in remaining if r not in chosen]
            want.append((len(pruned), *score(pruned)))
    got = [(r["n_pruned"], r["value"]) for r in curve if r["metric"] == "logit"][1:]
    assert [g[0] for g in got] == [w[0] for w in want] == [3, 6, 8]
    np.testing.assert_allclose([g[1] for g in got], [w[2] for w in want], atol=1e-4)


def test_derangement_moves_every_image():
    for n in (2, 3, 17):
        p = derangement(n, seed=n)
        assert sorted(p) == list(range(n)) and not (p == np.arange(n)).any()
    with pytest.raises(ValueError, match="at least two images"):
        derangement(1)


@pytest.mark.parametrize("kw, words", [(dict(method="mean_"), "`method` must be one of zero, mean, resample"),
                                       (dict(mean_over="token"), "`mean_over` must be one of position, global"),
                                       (dict(prune_step=0), "`prune_step` must be a positive integer, got 0"),
                                       (dict(limit=0), "`limit` must be a positive integer, got 0")])
def test_options_say_what_was_expected(kw, words):
    from vitscope.analysis.api import OptionError

    with pytest.raises(OptionError, match=words.replace("(", "\\(")):
        AblateOptions(**kw)


def test_evaluate_table_and_figures(tiny_cfg_kwargs):
    m = _model(tiny_cfg_kwargs)
    x, y = _data(8)
    r = evaluate(m, (x, y), AblateOptions(method="zero", prune=True, prune_step=4, prune_images=4))
    t = r.table
    assert {"accuracy", "head_logit_drop", "mlp_accuracy_drop", "pruned_accuracy", "pruned_logit"} <= set(t["metric"])
    assert len(t[t["metric"] == "head_logit_drop"]) == 2 * 4 and len(t[t["metric"] == "mlp_logit_drop"]) == 2
    assert set(r.figures()) == {"ablation_logit_drop", "ablation_accuracy_drop", "ablation_pruning"}
    assert "zero ablation of heads and mlps on 8 images" in r.summary
