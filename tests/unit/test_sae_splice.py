"""The SAE spliced into a model: an identity 'SAE' leaves the model exactly as it was; hooks for interventions;
metrics against plain definitions."""
import numpy as np
import pytest
import torch

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.sae.metrics import activation_metrics, spliced_metrics
from vitscope.analysis.sae.models import SAE, SAEConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)).eval()


def identity_sae(d, tokens="patches", block=1):
    """A 'ReLU SAE' with W_enc = [I, -I], W_dec = [I; -I]: x_hat = relu(x) - relu(-x) = x exactly."""
    s = SAE(SAEConfig(d_in=d, width=2 * d, arch="relu", block=(block,), tokens=tokens))
    eye = torch.eye(d)
    with torch.no_grad():
        s.W_enc[0] = torch.cat([eye, -eye], 1)
        s.W_dec[0] = torch.cat([eye, -eye], 0)
    return s


@pytest.mark.parametrize("tokens", ["patches", "cls", "all"])
def test_identity_sae_spliced_is_the_original_model(model, tokens):
    x = torch.randn(3, 3, 32, 32)
    sae = identity_sae(32, tokens)
    with torch.no_grad():
        ref = model(x)
        with sae.hooks(model, 1) as m:
            got = m(x)
            _, cache = m.run_with_cache(x, names_filter=["blocks.1.sae.hook_latents", "blocks.1.sae.hook_recons"])
    assert torch.equal(ref, got)
    n = {"patches": 16, "cls": 1, "all": 17}[tokens]
    assert cache["blocks.1.sae.hook_latents"].shape == (3, n, 64)
    assert "blocks.1.sae.hook_latents" not in model.hook_names            # removed afterwards


def test_ablating_a_latent_changes_only_through_its_atom(model):
    x = torch.randn(2, 3, 32, 32)
    sae = identity_sae(32)
    seen = {}

    def ablate(z, hook):
        z[..., 3] = 0
        z[..., 35] = 0
        return z

    with torch.no_grad(), sae.hooks(model, 1) as m:
        m.run_with_hooks(x, fwd_hooks=[("blocks.1.sae.hook_recons", lambda t, h: seen.__setitem__("r", t)),
                                       ("blocks.1.sae.hook_latents", ablate)])
        _, cache = model.run_with_cache(x, names_filter="blocks.1.hook_resid_post")
    # with coordinate 3 zeroed in both halves, the reconstruction is x with dimension 3 zeroed
    _, c0 = model.run_with_cache(x, names_filter="blocks.1.hook_resid_post")
    want = c0["blocks.1.hook_resid_post"][:, 1:].clone()
    want[..., 3] = 0
    torch.testing.assert_close(seen["r"], want)


def test_width_mismatch_is_one_line(model):
    sae = identity_sae(16)
    with pytest.raises(ValueError, match="width 32") as e:
        with sae.hooks(model, 1):
            pass
    assert "\n" not in str(e.value)


def test_activation_metrics_against_definitions():
    torch.manual_seed(0)
    s = SAE(SAEConfig(d_in=8, width=20, arch="topk", k=(3,)))
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(torch.randn_like(p))
        s.W_dec[0, 7] = 0
        s.b_enc[0, 7] = -100          # latent 7 never fires
        s.b_enc[0, 2] = 100           # latent 2 always fires
    x = torch.randn(50, 8) * 2 + 1
    m, density = activation_metrics(s, [x[:20], x[20:]])
    z = s.encode(x).detach().numpy()
    xh = s.reconstruct(x).detach().numpy()
    xn = x.numpy()
    assert m["l0"] == pytest.approx((z > 0).sum(1).mean())
    assert m["fvu"] == pytest.approx(((xn - xh) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum(), rel=1e-5)
    cos = [xn[i] @ xh[i] / np.linalg.norm(xn[i]) / np.linalg.norm(xh[i]) for i in range(50)]
    assert m["cosine"] == pytest.approx(np.mean(cos), rel=1e-5)
    assert density[7] == 0 and density[2] == 1
    assert m["dead_fraction"] == pytest.approx((z.sum(0) == 0).mean())


def test_spliced_metrics_identity_and_bounds(model):
    torch.manual_seed(1)
    x = torch.randn(16, 3, 32, 32)
    y = np.arange(16) % 5
    r = spliced_metrics(model, identity_sae(32), x, y, block=1)
    assert r["sae"]["top1_agreement"] == 1.0 and r["sae"]["kl"] == pytest.approx(0, abs=1e-10)
    assert r["sae"]["kl_recovered"] == pytest.approx(1.0)
    assert r["zero"]["kl"] > 0 and r["sae"]["knn_top1"] == r["original"]["knn_top1"]
    # the zero bound by hand
    with torch.no_grad():
        def zero(t, h):
            t = t.clone()
            t[:, 1:] = 0
            return t
        o = model(x).log_softmax(-1)
        z = model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_resid_post", zero)]).log_softmax(-1)
    assert r["zero"]["kl"] == pytest.approx(float((o.exp() * (o - z)).sum(-1).mean()), rel=1e-5)
