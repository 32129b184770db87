"""SAE activations and losses against plain implementations written from their papers."""
import math

import numpy as np
import pytest
import torch

from vitscope.analysis.sae.models import (SAE, SAEConfig, auxk_loss, geometric_median, init_from_data,
                                          scale_factor, stack_members)


def _sae(arch, d=6, w=10, k=(3,), l1=(0.5,), seed=0, **kw):
    torch.manual_seed(seed)
    s = SAE(SAEConfig(d_in=d, width=w, arch=arch, k=k, l1=l1, block=(0,) * len(k), **kw))
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        if arch == "jumprelu":
            s.log_threshold.copy_(torch.full_like(s.log_threshold, math.log(0.3)))
    return s


def _pre(s, x):  # (B, d) -> (B, w) for member 0, from the definition
    W_enc, b_enc, b_dec = s.W_enc[0].detach(), s.b_enc[0].detach(), s.b_dec[0].detach()
    return np.array([[sum((x[i, j] - b_dec[j]) * W_enc[j, m] for j in range(x.shape[1])) + b_enc[m]
                      for m in range(W_enc.shape[1])] for i in range(x.shape[0])], dtype=np.float64)


def test_topk_keeps_the_k_largest_per_token():
    s = _sae("topk", k=(3,))
    x = torch.randn(5, 6)
    z = s.encode(x, normalised=True).detach().numpy()
    pre = _pre(s, x.numpy())
    for i in range(5):
        order = sorted(range(10), key=lambda m: -pre[i, m])
        want = np.zeros(10)
        for m in order[:3]:
            want[m] = max(pre[i, m], 0.0)
        np.testing.assert_allclose(z[i], want, atol=1e-5)


def test_batchtopk_training_keeps_k_times_batch_and_threshold_at_inference():
    s = _sae("batchtopk", k=(2,))
    x = torch.randn(4, 6)
    out = s.loss(x.unsqueeze(0))
    z = out["z"][0].detach().numpy()
    pre = np.maximum(_pre(s, x.numpy()), 0)
    flat = sorted(pre.ravel(), reverse=True)
    cut = flat[2 * 4 - 1]
    want = np.where(pre >= cut, pre, 0)
    np.testing.assert_allclose(z, want, atol=1e-5)
    # the inference threshold: the first batch sets it to the smallest kept activation, then an EMA (rate r)
    s.update_threshold()
    assert s.threshold[0].item() == pytest.approx(cut, rel=1e-5)
    x2 = torch.randn(4, 6)
    s.loss(x2.unsqueeze(0))
    cut2 = sorted(np.maximum(_pre(s, x2.numpy()), 0).ravel(), reverse=True)[7]
    s.update_threshold()
    assert s.threshold[0].item() == pytest.approx(0.99 * cut + 0.01 * cut2, rel=1e-5)
    zi = s.encode(x2, normalised=True).detach().numpy()
    pre2 = _pre(s, x2.numpy())
    np.testing.assert_allclose(zi, np.where(pre2 > s.threshold[0].item(), np.maximum(pre2, 0), 0), atol=1e-5)


def test_relu_loss_is_mse_plus_l1_times_decoder_norms():
    s = _sae("relu", l1=(0.7,))
    x = torch.randn(5, 6)
    out = s.loss(x.unsqueeze(0))
    pre = _pre(s, x.numpy())
    z = np.maximum(pre, 0)
    W_dec, b_dec = s.W_dec[0].detach().numpy().astype(np.float64), s.b_dec[0].detach().numpy()
    xh = z @ W_dec + b_dec
    mse = np.mean([sum((x.numpy()[i] - xh[i]) ** 2) for i in range(5)])
    l1 = np.mean([sum(z[i, m] * np.sqrt(sum(W_dec[m] ** 2)) for m in range(10)) for i in range(5)])
    assert out["mse"].item() == pytest.approx(mse, rel=1e-4)
    assert out["loss"].item() == pytest.approx(mse + 0.7 * l1, rel=1e-4)


def test_jumprelu_forward_and_pseudo_derivatives():
    """Rajamanoharan et al. 2024: d JumpReLU / d theta = -(theta/eps) K((x-theta)/eps), d H / d theta =
    -(1/eps) K((x-theta)/eps), K the rectangle kernel; no gradient through H to x."""
    eps = 0.5
    s = _sae("jumprelu", l1=(0.2,), bandwidth=eps)
    x = torch.randn(7, 6)
    out = s.loss(x.unsqueeze(0))
    pre = _pre(s, x.numpy())
    theta = math.exp(s.log_threshold[0, 0].item())
    z = np.where(pre > theta, pre, 0.0)
    np.testing.assert_allclose(out["z"][0].detach().numpy(), z, atol=1e-5)
    assert out["sparsity"].item() == pytest.approx(np.mean((pre > theta).sum(1)), rel=1e-6)
    # gradient of the L0 term alone w.r.t. log theta (chain rule through theta = exp(log theta))
    s.zero_grad()
    s.l1.fill_(1.0)
    out = s.loss(x.unsqueeze(0))
    out["sparsity"].sum().backward()
    K = (np.abs((pre - theta) / eps) < 0.5).astype(float)
    want = (-(1 / eps) * K).sum(0) / 7 * theta
    np.testing.assert_allclose(s.log_threshold.grad[0].numpy(), want, rtol=1e-4, atol=1e-6)
    # gradient of sum(z) w.r.t. log theta: -(theta/eps) K summed, times theta
    s.zero_grad()
    z_t = s.activate(s.pre_acts(x.unsqueeze(0)))
    z_t.sum().backward()
    want = (-(theta / eps) * K).sum(0) * theta
    np.testing.assert_allclose(s.log_threshold.grad[0].numpy(), want, rtol=1e-4, atol=1e-6)


def test_matryoshka_sums_the_prefix_losses():
    s = _sae("matryoshka", k=(3,), prefixes=(2, 5))
    x = torch.randn(6, 6)
    out = s.loss(x.unsqueeze(0))
    z = out["z"][0].detach().numpy().astype(np.float64)
    W_dec, b_dec = s.W_dec[0].detach().numpy(), s.b_dec[0].detach().numpy()
    total = 0.0
    for m in (2, 5, 10):
        xh = z[:, :m] @ W_dec[:m] + b_dec
        total += np.mean(((x.numpy() - xh) ** 2).sum(1))
    assert s.cfg.prefixes == (2, 5, 10)
    assert out["mse"].item() == pytest.approx(total, rel=1e-4)


def test_auxk_from_gao2024():
    torch.manual_seed(1)
    pre = torch.randn(1, 5, 8)
    dead = torch.tensor([[True, False, True, True, False, False, True, False]])
    W_dec = torch.randn(1, 8, 3)
    e = torch.randn(1, 5, 3)
    got = auxk_loss(pre, dead, e, W_dec, k_aux=2)
    num = den = 0.0
    em = e[0].mean(0)
    for i in range(5):
        cand = sorted([m for m in range(8) if dead[0, m]], key=lambda m: -pre[0, i, m].item())[:2]
        eh = sum(max(pre[0, i, m].item(), 0) * W_dec[0, m] for m in cand)
        num += float(((eh - e[0, i]) ** 2).sum())
        den += float(((e[0, i] - em) ** 2).sum())
    assert got.item() == pytest.approx(num / den, rel=1e-5)


def test_geometric_median_against_scipy():
    from scipy.optimize import minimize

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 3))
    x[:5] += 20
    ref = minimize(lambda y: np.linalg.norm(x - y, axis=1).sum(), x.mean(0), method="Nelder-Mead",
                   options={"xatol": 1e-9, "fatol": 1e-10, "maxiter": 20000}).x
    got = geometric_median(torch.tensor(x), iters=500).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4)


def test_init_tied_and_unit_norm_and_scale():
    s = SAE(SAEConfig(d_in=6, width=10, arch="topk", k=(2,)))
    x = torch.randn(1, 50, 6) * 3
    s.scale.copy_(scale_factor(x))
    assert (s.normalise(x[0]).pow(2).sum(-1).mean()).item() == pytest.approx(6, rel=1e-5)
    init_from_data(s, s.normalise(x), torch.Generator().manual_seed(0), "mean")
    torch.testing.assert_close(s.W_enc[0], s.W_dec[0].T)
    torch.testing.assert_close(s.W_dec[0].norm(dim=-1), torch.ones(10))
    torch.testing.assert_close(s.b_dec[0], s.normalise(x[0]).mean(0))


def test_stacked_members_equal_separate_saes():
    a, b = _sae("topk", k=(2,), seed=0), _sae("topk", k=(4,), seed=1)
    st = stack_members([a, b])
    x = torch.randn(2, 5, 6)
    z = st.encode(x)
    torch.testing.assert_close(z[0], a.encode(x[0]))
    torch.testing.assert_close(z[1], b.encode(x[1]))


@pytest.mark.parametrize("bad", [dict(width=0), dict(k=(11,)), dict(arch="gated")])
def test_bad_configs_are_one_line(bad):
    kw = dict(d_in=6, width=10, arch="topk", k=(2,))
    kw.update(bad)
    with pytest.raises(ValueError) as e:
        SAEConfig(**kw)
    assert "\n" not in str(e.value)


def test_topk_loss_decodes_sparsely_as_the_dense_definition():
    """TopK's training step decodes its k values per token without the dense latents; the loss, AuxK and every
    gradient equal the dense definition (z @ W_dec with z the k largest of ReLU(pre), Gao et al. 2024), for a stack
    of two members with different k and some dead latents."""
    torch.manual_seed(0)
    s = SAE(SAEConfig(d_in=6, width=12, arch="topk", k=(2, 4), block=(0, 0), aux_k=3))
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        s.b_enc[0, 0] += 5.0          # latent 0 fires on every token of member 0, where k = 2 is padded at latent 0
    ref = SAE(s.cfg)
    ref.load_state_dict(s.state_dict())
    x = torch.randn(2, 9, 6)
    dead = torch.zeros(2, 12, dtype=torch.bool)
    dead[0, [1, 5, 7, 8]] = True
    dead[1, [0, 3]] = True
    out = s.loss(x, dead)
    out["loss"].sum().backward()
    # the dense definition, written out
    pre = torch.einsum("gbd,gdw->gbw", x - ref.b_dec.unsqueeze(1), ref.W_enc) + ref.b_enc.unsqueeze(1)
    z = torch.zeros_like(pre)
    for g, k in enumerate((2, 4)):
        v, i = pre[g].topk(k, dim=-1)
        z[g] = torch.zeros_like(pre[g]).scatter(-1, i, v.relu())
    x_hat = torch.einsum("gbw,gwd->gbd", z, ref.W_dec) + ref.b_dec.unsqueeze(1)
    mse = (x - x_hat).pow(2).sum(-1).mean(-1)
    aux = auxk_loss(pre, dead, (x - x_hat).detach(), ref.W_dec, 3)
    want = mse + ref.cfg.aux_coef * aux
    want.sum().backward()
    torch.testing.assert_close(out["loss"], want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["x_hat"], x_hat, rtol=1e-5, atol=1e-6)
    for name, p in s.named_parameters():
        torch.testing.assert_close(p.grad, dict(ref.named_parameters())[name].grad, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(out["fired"].numpy(), (z > 0).any(1).numpy())
    np.testing.assert_allclose(out["l0"].numpy(), (z > 0).sum(-1).float().mean(-1).numpy())  # TopK only

