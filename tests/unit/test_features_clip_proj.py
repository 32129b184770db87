"""The ``clip_proj`` store site: the final norm followed by the CLIP projection on every token."""
import numpy as np
import pytest
import torch

import vitscope.features as vf
from vitscope import HookedViT, ViTConfig
from vitscope.analysis.probes.inputs import parse_inputs
from vitscope.features import extract_features, make_plan

CLIP = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, pre_norm=True, patch_bias=False,
            act="quick_gelu", norm_eps=1e-5, head="clip_proj", head_bias=False, num_classes=12)


class Images(torch.utils.data.Dataset):
    def __init__(self, n=7):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 3, 16, 16, generator=g)
        self.labels = np.arange(n) % 2
        self.classes = ["a", "b"]

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.labels[i]), i


@pytest.fixture(scope="module")
def clip_store(tmp_path_factory):
    torch.manual_seed(0)
    model = HookedViT(ViTConfig(**CLIP)).eval()
    with torch.no_grad():                                  # non-trivial final-norm affine parameters
        model.ln_final.weight.normal_(1.0, 0.3)
        model.ln_final.bias.normal_(0.0, 0.3)
    ds = Images()
    store = extract_features(model, ds, tmp_path_factory.mktemp("clip") / "s", sites="ln2,ln_final,clip_proj",
                             layers="all", tokens="cls,mean,all", progress=False)
    return model, ds, store


def test_clip_proj_cls_is_the_model_embedding_and_tokens_are_projected(clip_store):
    model, ds, store = clip_store
    assert "clip_proj" in store.sites and store["clip_proj", "all"].shape == (7, 5, 12)
    with torch.no_grad():
        emb = model(ds.x)                                                  # head(pooled): CLIP's image embedding
        _, cache = model.run_with_cache(ds.x, names_filter="blocks.1.hook_resid_post")
    np.testing.assert_allclose(store["clip_proj", "cls"], emb.numpy(), rtol=1e-5, atol=1e-6)
    # plain computation: LayerNorm written out, then the projection, on every token
    h = cache["blocks.1.hook_resid_post"].double()                          # B, T, D
    w = {k: v.detach().double() for k, v in model.state_dict().items()}
    mu = h.mean(-1, keepdim=True)
    var = ((h - mu) ** 2).mean(-1, keepdim=True)
    normed = (h - mu) / torch.sqrt(var + 1e-5) * w["ln_final.weight"] + w["ln_final.bias"]
    proj = normed @ w["head.weight"].T                            # B, T, 12
    np.testing.assert_allclose(store["clip_proj", "all"], proj.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store["clip_proj", "mean"], proj[:, 1:].mean(1).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(store["ln_final", "all"], normed.numpy(), rtol=1e-4, atol=1e-5)  # unchanged site


def test_probe_layer_sets_use_the_clip_site(clip_store):
    _, _, store = clip_store
    inputs = parse_inputs("all", 2, sites=store.sites)
    assert [i.name for i in inputs] == ["ln2.1.cls", "ln2.1.mean", "clip_proj.cls", "clip_proj.mean"]


def test_clip_proj_needs_a_clip_head():
    model = HookedViT(ViTConfig(**{**CLIP, "head": "linear", "head_bias": True}))
    with pytest.raises(ValueError, match="not a CLIP projection"):
        make_plan(model, sites="clip_proj", tokens="cls")
    plan = make_plan(HookedViT(ViTConfig(**CLIP)), sites="clip_proj", tokens="cls")
    assert plan.stop_at is None and plan.keys == [("clip_proj", None, "cls")]
    assert vf.canonical_site("clip_proj") == ("clip_proj", False, None)
