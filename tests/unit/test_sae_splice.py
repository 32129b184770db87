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


def _site_sae(d, site, block=1):
    s = identity_sae(d, block=block)
    s.cfg.site = site
    return s


@pytest.mark.parametrize("site, hook, d", [("mlp_out", "blocks.1.hook_mlp_out", 32),
                                           ("resid_mid", "blocks.1.hook_resid_mid", 32),
                                           ("blocks.{i}.mlp.hook_post", "blocks.1.mlp.hook_post", 128)])
def test_an_sae_replaces_the_site_it_was_trained_on(model, site, hook, d):
    """Ablating latent 3 (and its negative twin) of an identity SAE of ``site`` is zeroing coordinate 3 of that
    hook's patch tokens, written here as a plain hook; the residual stream's coordinate 3 is another intervention."""
    x = torch.randn(2, 3, 32, 32)
    sae = _site_sae(d, site)

    def ablate(z, h):
        z[..., 3] = 0
        z[..., d + 3] = 0
        return z

    def zero3(t, h):
        t = t.clone()
        t[:, 1:, 3] = 0
        return t

    with torch.no_grad():
        with sae.hooks(model, 1) as m:
            got = m.run_with_hooks(x, fwd_hooks=[("blocks.1.sae.hook_latents", ablate)])
        want = model.run_with_hooks(x, fwd_hooks=[(hook, zero3)])
        other = model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_resid_post", zero3)])
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, other)


def test_a_head_split_site_is_read_and_replaced_flat(model):
    """attn.hook_z (B, T, H, Dh) is read as the store keeps it, (B, T, H * Dh): the identity SAE leaves the model
    as it is, and the bases of the factor table are that flattened activation."""
    from vitscope.analysis.sae.factors import factor_bases

    x = torch.randn(3, 3, 32, 32)
    sae = _site_sae(32, "blocks.{i}.attn.hook_z")
    with torch.no_grad():
        ref = model(x)
        with sae.hooks(model, 1) as m:
            got = m(x)
        _, cache = model.run_with_cache(x, names_filter="blocks.1.attn.hook_z")
    torch.testing.assert_close(got, ref)
    bases = factor_bases(model, sae, x, 1)
    want = cache["blocks.1.attn.hook_z"][:, 1:].reshape(3 * 16, 4 * 8)
    np.testing.assert_array_equal(bases["neurons"][0], want.numpy())


def test_metrics_read_the_sae_site(model):
    """The spliced metrics' zero bound zeroes the SAE's own site: for an mlp_out SAE, the model with the block's MLP
    output zeroed at the patches (by hand), not the residual stream."""
    torch.manual_seed(2)
    x = torch.randn(8, 3, 32, 32)
    r = spliced_metrics(model, _site_sae(32, "mlp_out"), x, None, block=1)
    assert r["sae"]["kl"] == pytest.approx(0, abs=1e-10)

    def zero(t, h):
        t = t.clone()
        t[:, 1:] = 0
        return t

    with torch.no_grad():
        o = model(x).log_softmax(-1)
        z = model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_mlp_out", zero)]).log_softmax(-1)
    assert r["zero"]["kl"] == pytest.approx(float((o.exp() * (o - z)).sum(-1).mean()), rel=1e-5)


def test_site_width_and_logit_effects():
    """An SAE of an MLP hidden layer has the MLP's width; its atoms are not in the stream's space, so it has no
    logit effect; a stream SAE of the wrong width or a site outside a block is one line."""
    from vitscope.analysis.sae.browse import logit_effects
    from vitscope.analysis.sae.hooks import check_width

    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)).eval()
    check_width(_site_sae(128, "blocks.{i}.mlp.hook_post"), m)
    assert logit_effects(_site_sae(128, "blocks.{i}.mlp.hook_post"), m, [0]) is None
    assert logit_effects(_site_sae(32, "mlp_out"), m, [0]).shape == (1, 5)
    with pytest.raises(ValueError, match="width 128 at mlp.hook_post") as e:
        check_width(_site_sae(32, "blocks.{i}.mlp.hook_post"), m)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not a block's activation"):
        check_width(_site_sae(32, "ln_final"), m)


@pytest.mark.parametrize("site, hook", [("resid_pre", "hook_resid_pre"), ("mlp_out", "hook_mlp_out")])
@pytest.mark.parametrize("block", [1, 2])
def test_sites_with_late_cls_and_registers(site, hook, block):
    """Registers enter at block 1 and CLS at block 2: an SAE of any site replaces exactly that hook's patch tokens
    (zeroed here by a plain hook at the token layout's patch positions), including the block the CLS enters."""
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5,
                            cls_block=2, num_registers=2, register_block=1)).eval()
    x = torch.randn(2, 3, 32, 32)
    sae = _site_sae(32, site, block)
    patches = m.token_layout(block).patches

    def ablate(z, h):
        z[..., 3] = 0
        z[..., 35] = 0
        return z

    def zero3(t, h):
        t = t.clone()
        t[:, patches, 3] = 0
        return t

    with torch.no_grad():
        with sae.hooks(m, block) as mm:
            got = mm.run_with_hooks(x, fwd_hooks=[(f"blocks.{block}.sae.hook_latents", ablate)])
        want = m.run_with_hooks(x, fwd_hooks=[(f"blocks.{block}.{hook}", zero3)])
    torch.testing.assert_close(got, want)


def test_one_image_has_no_knn_and_a_transplanted_sae_is_named():
    """One usable image: every spliced metric but the k-NN (which needs a train and a test half), no error; an SAE
    trained on another model of the same width is measured, and the summary says so."""
    from vitscope import PreprocessConfig
    from vitscope.analysis.sae import SAEOptions, evaluate

    torch.manual_seed(0)
    m = HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=4,
                            meta={"classes": ["circle", "square", "triangle", "cross"]}),
                  PreprocessConfig(input_size=32, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)).eval()
    m.meta = {"name": "tiny"}
    r = spliced_metrics(m, identity_sae(32), torch.randn(1, 3, 32, 32), np.array([2]), block=1)
    assert "knn_top1" not in r["sae"] and r["sae"]["accuracy"] in (0.0, 1.0)
    sae = identity_sae(32)
    sae.cfg.meta = {"model": "elsewhere"}
    res = evaluate(sae, "synthetic:size=32,classes=4,n=4,split=test", SAEOptions(limit=4, factors=False), model=m)
    assert "note: trained on elsewhere, measured on tiny" in res.summary
    sae.cfg.meta = {"model": "tiny"}
    assert "note:" not in evaluate(sae, "synthetic:size=32,classes=4,n=4,split=test",
                                   SAEOptions(limit=4, factors=False), model=m).summary
