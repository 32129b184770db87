"""Probes (ciernik2025): each piece against an independent reference (hand computations, SciPy, scikit-learn, plain
loops written from the reference's description)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitscope.analysis.probes import (AttentiveGrid, AttentiveProbe, ProbeInput, TrainConfig, adjust_batch_size,
                                      balanced_topk_accuracy, benjamini_hochberg, class_weights, cosine_lr,
                                      layer_set, load_linear_head, parse_inputs, probe_metrics, save_linear_head,
                                      seed_order, train_linear_grid, train_probe, tune_linear)
from vitscope.analysis.probes.attentive import load_attentive_probe, save_attentive_probe
from vitscope.analysis.probes.train import build_seeded, predict, schedule


# ----------------------------------------------------------------------------- the attentive probe module
SEED_KEYS = {
    "query_token", "attn_block.norm_q.weight", "attn_block.norm_q.bias", "attn_block.norm_k.weight",
    "attn_block.norm_k.bias", "attn_block.norm_v.weight", "attn_block.norm_v.bias",
    "attn_block.cross_attn.q.weight", "attn_block.cross_attn.k.weight", "attn_block.cross_attn.v.weight",
    "attn_block.cross_attn.proj.weight", "attn_block.cross_attn.proj.bias", "bn.weight", "bn.bias",
    "bn.running_mean", "bn.running_var", "bn.num_batches_tracked", "classifier.weight", "classifier.bias",
}


def plain_attentive(sd, x, H, eps=1e-5):
    """ciernik2025's probe written from the reference, one sample and one head at a time (eval mode)."""
    B, N, D = x.shape
    Dh = 2 * (D // H)

    def ln(v, w, b):
        mu = v.mean()
        var = ((v - mu) ** 2).mean()
        return (v - mu) / math.sqrt(var + eps) * w + b

    out = torch.zeros(B, sd["classifier.weight"].shape[0], dtype=torch.float64)
    att = torch.zeros(B, H, N, dtype=torch.float64)
    sd = {k: v.double() for k, v in sd.items()}
    q_in = ln(sd["query_token"][0, 0], sd["attn_block.norm_q.weight"], sd["attn_block.norm_q.bias"])
    for b in range(B):
        heads = []
        for h in range(H):
            rows = slice(h * Dh, (h + 1) * Dh)
            q = sd["attn_block.cross_attn.q.weight"][rows] @ q_in
            scores = []
            vals = []
            for n in range(N):
                xk = ln(x[b, n].double(), sd["attn_block.norm_k.weight"], sd["attn_block.norm_k.bias"])
                xv = ln(x[b, n].double(), sd["attn_block.norm_v.weight"], sd["attn_block.norm_v.bias"])
                scores.append(float(q @ (sd["attn_block.cross_attn.k.weight"][rows] @ xk)) * Dh ** -0.5)
                vals.append(sd["attn_block.cross_attn.v.weight"][rows] @ xv)
            s = torch.tensor(scores, dtype=torch.float64)
            a = torch.exp(s - s.max())
            a = a / a.sum()
            att[b, h] = a
            heads.append(sum(a[n] * vals[n] for n in range(N)))
        o = sd["attn_block.cross_attn.proj.weight"] @ torch.cat(heads) + sd["attn_block.cross_attn.proj.bias"]
        o = (o - sd["bn.running_mean"]) / torch.sqrt(sd["bn.running_var"] + eps) * sd["bn.weight"] + sd["bn.bias"]
        out[b] = sd["classifier.weight"] @ o + sd["classifier.bias"]
    return out, att


def test_attentive_probe_matches_plain_implementation_and_seed_keys():
    torch.manual_seed(0)
    D, H, C = 12, 5, 4                                     # Dh = 2 * floor(12 / 5) = 4, A = 20 != D
    probe = AttentiveProbe(D, H, C)
    assert set(probe.state_dict()) == SEED_KEYS
    assert probe.attn_block.cross_attn.q.weight.shape == (20, D)
    assert probe.attn_block.cross_attn.q.bias is None and probe.attn_block.cross_attn.proj.bias is not None
    sd = {k: v.clone() for k, v in probe.state_dict().items()}
    for k in sd:                                            # non-trivial norms and BatchNorm statistics
        if sd[k].is_floating_point():
            sd[k] = sd[k] + 0.3 * torch.randn_like(sd[k])
    sd["bn.running_var"] = sd["bn.running_var"].abs() + 0.5
    fresh = AttentiveProbe(D, H, C)
    fresh.load_state_dict(sd, strict=True)                  # a seed state dict loads strictly
    x = torch.randn(3, 6, D)
    from vitscope.analysis.probes import attention_over_inputs
    logits, att = attention_over_inputs(fresh, x)
    ref, ref_att = plain_attentive(sd, x, H)
    assert torch.allclose(logits.double(), ref, atol=1e-4)
    assert torch.allclose(att.double(), ref_att, atol=1e-5)
    assert att.shape == (3, H, 6)


def test_attentive_probe_file_roundtrip(tmp_path):
    probe = AttentiveProbe(8, 2, 3, attn_drop=0.1).eval()
    save_attentive_probe(tmp_path / "p", probe, {"model": "m"})
    back, meta = load_attentive_probe(tmp_path / "p")
    x = torch.randn(4, 3, 8)
    assert torch.equal(back(x), probe(x)) and meta["model"] == "m" and meta["attn_drop"] == 0.1


# ----------------------------------------------------------------------------- recipe pieces vs hand computations
def test_class_weights_by_hand():
    y = torch.tensor([0, 0, 0, 2, 2, 3])                    # label 1 absent, K = 4, N = 6
    w = class_weights(y, num_classes=6)
    expect = [6 / (4 * 3), 0.0, 6 / (4 * 2), 6 / (4 * 1), 0.0, 0.0]
    assert torch.allclose(w, torch.tensor(expect))


def test_balanced_accuracy_against_sklearn_and_by_hand():
    from sklearn.metrics import balanced_accuracy_score, top_k_accuracy_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 200)
    logits = torch.tensor(rng.normal(size=(200, 7)) + 2 * np.eye(7)[y] * rng.random((200, 1)))
    assert math.isclose(balanced_topk_accuracy(logits, torch.tensor(y), 1),
                        balanced_accuracy_score(y, logits.argmax(1).numpy()), rel_tol=1e-6)
    m = probe_metrics(logits, torch.tensor(y))
    assert math.isclose(m["top5"], top_k_accuracy_score(y, logits.numpy(), k=5), rel_tol=1e-6)
    top5 = np.argsort(-logits.numpy(), 1)[:, :5]
    hit = np.array([y[i] in top5[i] for i in range(200)])
    assert math.isclose(m["balanced_top5"], np.mean([hit[y == c].mean() for c in range(7)]), rel_tol=1e-6)
    few = probe_metrics(logits[:, :3], torch.tensor(y % 3))
    assert math.isnan(few["top5"]) and math.isnan(few["balanced_top5"])


def test_cosine_schedule_by_hand():
    assert cosine_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert cosine_lr(0.1, 50, 100) == pytest.approx((0.1 - 1e-6) / 2 + 1e-6)
    last = cosine_lr(0.1, 99, 100)
    assert last == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.99)) * (0.1 - 1e-6) + 1e-6) and last > 1e-6


@pytest.mark.parametrize("n,expect", [(20000, 2048), (10000, 2000), (100, 20), (4096, 744), (50, 1), (11000, 2200)])
def test_batch_size_rule_by_hand(n, expect):
    # 20000: 9 full batches + 1568 >= 1024 kept; 10000: 4 full -> 2000 x 5; 100: 20 x 5; 4096: 5 b + r, r >= b/2
    # -> b <= 744; 50: no size >= 17 gives 5 batches -> 1; 11000: 5 full + 760 < 1024 -> from 2201 down: 2200 x 5
    assert adjust_batch_size(2048, n) == expect


def test_steps_minimum_by_hand():
    assert schedule(10000, 2000, 40) == (5, 200)            # 5 x 200 = 1000 >= 1000
    assert schedule(10000, 2000, 300) == (5, 300)
    assert schedule(1000, 100, 40) == (10, 100)


def test_benjamini_hochberg_against_scipy():
    from scipy.stats import false_discovery_control

    rng = np.random.default_rng(1)
    for _ in range(5):
        p = rng.random(16) ** 3
        assert np.allclose(benjamini_hochberg(p), false_discovery_control(p, method="bh"))
    # by hand: sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.06, 0.0533, 0.5 -> monotone from the top: 0.04, 0.0533, 0.0533, 0.5
    assert np.allclose(benjamini_hochberg([0.01, 0.04, 0.03, 0.5]), [0.04, 0.16 / 3, 0.16 / 3, 0.5])


# ----------------------------------------------------------------------------- batched == one at a time
def _data(L, N, D, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, N, D, generator=g)
    y = torch.randint(0, C, (N,), generator=g)
    return x, y


def test_batched_linear_grid_equals_one_at_a_time():
    x, y = _data(3, 150, 10, 4)
    cfg = TrainConfig(epochs=1, min_steps=25, batch_size=40, seed=5)
    lrs, wds = [0.1, 0.01, 0.001], [1e-6, 0.1, 1.0]
    W, b, info = train_linear_grid(x, y, lrs, wds, cfg, 4)
    assert info["steps"] >= 25 and W.shape == (3, 3, 4, 10)
    for layer in range(3):
        for g, (lr, wd) in enumerate(zip(lrs, wds)):
            m = build_seeded(lambda: nn.Linear(10, 4), cfg.seed)
            train_probe(m, x[layer], y, cfg.with_(lr=lr, weight_decay=wd), 4)     # torch.optim.AdamW, clip_grad_norm_
            assert torch.allclose(m.weight, W[layer, g], atol=2e-5), (layer, g)
            assert torch.allclose(m.bias, b[layer, g], atol=2e-5)


def test_batched_linear_grid_clips_each_probe_like_clip_grad_norm():
    """Large features make every probe's gradient norm exceed 5 (the clip acts each step); per-layer learning
    rates (L, 1) as the retraining after tuning passes them; the last batch is partial."""
    x, y = _data(2, 130, 6, 3, seed=4)
    x = 40 * x
    cfg = TrainConfig(epochs=1, min_steps=12, batch_size=50, seed=2)
    lrs, wds = [[0.05], [0.003]], [[0.01], [0.3]]
    W, b, _ = train_linear_grid(x, y, lrs, wds, cfg, 3)
    for layer in range(2):
        m = build_seeded(lambda: nn.Linear(6, 3), cfg.seed)
        first = {}

        def norm_hook(*_):
            first.setdefault("n", float(m.weight.grad.norm()))

        m.weight.register_post_accumulate_grad_hook(norm_hook)
        train_probe(m, x[layer], y, cfg.with_(lr=lrs[layer][0], weight_decay=wds[layer][0]), 3)
        assert first["n"] > 5                                         # the clip was active
        assert torch.allclose(m.weight, W[layer, 0], atol=1e-4), layer
        assert torch.allclose(m.bias, b[layer, 0], atol=1e-4)


NULL_GRAD = {"attn_block.norm_k.bias", "attn_block.norm_v.bias", "attn_block.cross_attn.proj.bias",
             "bn.running_mean"}


@pytest.mark.parametrize("drop", [0.0, 0.2])
def test_batched_attentive_grid_equals_one_at_a_time(drop):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(120, 5, 12, generator=g)
    y = torch.randint(0, 3, (120,), generator=g)
    cfg = TrainConfig(epochs=1, min_steps=15, batch_size=40, seed=1)
    lrs, wds = [0.01, 0.001], [1e-3, 0.5]
    grid = AttentiveGrid(12, 3, 3, 2, seed=1, attn_drop=drop)
    grid.fit(x, y, lrs, wds, cfg)
    for k, (lr, wd) in enumerate(zip(lrs, wds)):
        m = build_seeded(lambda: AttentiveProbe(12, 3, 3, attn_drop=drop), 1)
        train_probe(m, x, y, cfg.with_(lr=lr, weight_decay=wd), 3)
        got = grid.probe(k)
        a, b = m.state_dict(), got.state_dict()
        skip = NULL_GRAD - ({"attn_block.norm_v.bias"} if drop else set())
        for key in a:
            if key not in skip:
                assert torch.allclose(a[key].float(), b[key].float(), atol=1e-4), (key, drop)
        m.train(), got.train()                           # batch statistics: the null-gradient shifts cancel
        m.attn_block.cross_attn.attn_drop.p = got.attn_block.cross_attn.attn_drop.p = 0.0
        assert torch.allclose(m(x), got(x), atol=1e-4)


# ----------------------------------------------------------------------------- real data: digits
def test_tuned_linear_probe_on_digits_matches_sklearn_logistic_regression():
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split

    from vitscope.analysis.probes.tuning import val_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, stratify=y, random_state=0)
    torch.set_num_threads(1)
    fit = tune_linear([Xtr], ytr, [Xte], yte, cfg=TrainConfig(epochs=40))[0]
    tr, va = val_split(ytr, 0.2, 0)                          # the same validation split
    best = (-1.0, None)
    for c in (0.01, 0.1, 1.0, 10.0, 100.0):
        lr = LogisticRegression(C=c, max_iter=3000).fit(Xtr[tr], ytr[tr])
        s = lr.score(Xtr[va], ytr[va])
        if s > best[0]:
            best = (s, c)
    sk = LogisticRegression(C=best[1], max_iter=3000).fit(Xtr, ytr).score(Xte, yte)
    assert abs(fit.test_metrics["top1"] - sk) <= 0.01, (fit.test_metrics["top1"], sk)


# ----------------------------------------------------------------------------- inputs
def test_layer_sets_as_the_reference_defines_them():
    assert [(i.site, i.layer, i.reduction) for i in layer_set("last", 12)] == [("ln_final", None, "cls"),
                                                                               ("ln_final", None, "mean")]
    assert sorted({i.layer for i in layer_set("middle", 12)} - {None}) == [6]
    assert sorted({i.layer for i in layer_set("quarterly", 12)} - {None}) == [3, 6, 9]
    assert len(layer_set("middle", 12)) == 4 and len(layer_set("quarterly", 12)) == 8
    a12, a24 = layer_set("all", 12), layer_set("all", 24)
    assert len(a12) == 24 and len(a24) == 48 and 0 not in {i.layer for i in a12} and 11 in {i.layer for i in a12}
    assert layer_set("tokens", 12) == [ProbeInput("ln_final", None, "all")]
    order = [i.seed_key for i in seed_order(layer_set("all", 12))]
    assert order[:3] == ["ap@blocks.1.ln2", "ap@blocks.10.ln2", "ap@blocks.11.ln2"] and order[-1] == "cls@norm"
    assert parse_inputs("ln2.3.cls,ln_final.ap", 12) == [ProbeInput("ln2", 3, "cls"), ProbeInput("ln_final", None, "mean")]


def test_normalisation_matches_torch(tmp_path):
    from vitscope.analysis.probes.inputs import load_input

    class FakeStore:
        path, sites, layers, reductions = tmp_path, ["ln2"], [0], ["cls", "all"]
        valid = np.ones(4, bool)

        def get(self, site, layer, red):
            g = np.random.default_rng(0)
            return g.normal(size=(4, 5)) if red == "cls" else g.normal(size=(4, 3, 5))

    s = FakeStore()
    v = load_input(s, ProbeInput("ln2", 0, "cls"))
    assert np.allclose(v, F.normalize(torch.tensor(s.get(0, 0, "cls")), dim=1).numpy(), atol=1e-6)
    tok = torch.tensor(s.get(0, 0, "all"))
    assert np.allclose(load_input(s, ProbeInput("ln2", 0, "all")), F.normalize(tok, dim=-1).numpy(), atol=1e-6)
    over = load_input(s, ProbeInput("ln2", 0, "all"), token_norm="over_tokens")
    assert np.allclose(over, F.normalize(tok, dim=1).numpy(), atol=1e-6)
    ap_all = load_input(s, ProbeInput("ln2", 0, "ap_all"), normalize=False)
    assert np.allclose(ap_all, tok[:, 1:].mean(1).numpy(), atol=1e-6)


def test_linear_head_file_roundtrip(tmp_path):
    w, b = torch.randn(5, 7), torch.randn(5)
    files = save_linear_head(tmp_path / "head", w, b, {"model": "demo-vit", "layer": None})
    assert {p.suffix for p in files} == {".safetensors", ".json"}
    w2, b2, meta = load_linear_head(tmp_path / "head.safetensors")
    assert torch.equal(w, w2) and torch.equal(b, b2) and meta["num_classes"] == 5 and meta["model"] == "demo-vit"


# ----------------------------------------------------------------------------- bad input: one clear line
def test_bad_inputs_give_one_line_errors():
    from vitscope.analysis.probes.inputs import check_pair
    from vitscope.analysis.probes.tuning import check_labels

    x = np.random.default_rng(0).normal(size=(40, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="only one class"):
        tune_linear([x], np.zeros(40, int), [x], np.zeros(40, int))
    with pytest.raises(ValueError, match="not in the training split"):
        check_labels(np.array([0, 1, 0, 1]), np.array([0, 2]))
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        tune_linear([bad], np.arange(40) % 2, [x], np.arange(40) % 2)
    with pytest.raises(ValueError, match="training features have shape"):
        check_pair([x], [x[:, :3]], [ProbeInput("ln2", 0, "cls")])
    with pytest.raises(ValueError, match="unknown layer set"):
        layer_set("evrything", 12)
    with pytest.raises(ValueError, match="unknown layer set or input"):
        parse_inputs("evrything", 12)
    for e in ("only one class", "not in the training split"):
        assert "\n" not in e
