"""Names and local checkpoints: plain timm names, suggestions that load, fine-tuned heads of another size."""
import pytest
import torch

import vitscope as vs
from vitscope.models import registry
from vitscope.models.preprocess import PreprocessConfig
from vitscope.models.registry import ModelEntry, WeightSource, suggest_names
from vitscope.models.vit import HookedViT

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=1000)


def _timm_names(sd: dict) -> dict:
    """vitscope names -> timm names (timm's VisionTransformer attribute names)."""
    return {k.replace(".ln1.", ".norm1.").replace(".ln2.", ".norm2.").replace("ln_final.", "norm."): v.clone()
            for k, v in sd.items()}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_plain_timm_name_resolves_as_timm_prefix(offline):
    name = "vit_base_patch16_224.augreg2_in21k_ft_in1k"       # the README's example, not a registry entry
    with torch.device("meta"):
        plain = vs.load_model(name, pretrained=False)
        prefixed = vs.load_model(f"timm/{name}", pretrained=False)
    assert plain.cfg.to_dict() == prefixed.cfg.to_dict()
    assert (plain.cfg.embed_dim, plain.cfg.depth, plain.cfg.num_heads, plain.cfg.num_classes) == (768, 12, 12, 1000)
    assert plain.meta["name"] == prefixed.meta["name"] == f"timm/{name}"
    with pytest.raises(ValueError, match="grouped-query"):                    # unsupported: the same clear line
        vs.load_model("vit_large_patch16_sapiens2.x", pretrained=False)


@pytest.mark.parametrize("typo", ["demo_vit", "dino-vits61", "clip-b33", "vit-base-patch16-224.augreg",
                                  "vit-b16-cifar", "DINOV2-VITS41-REG"])
def test_every_suggestion_loads(typo, offline):
    with pytest.raises(KeyError, match="did you mean") as err:
        vs.load_model(typo, pretrained=False, device="meta")
    hint = str(err.value).split("did you mean ")[1].split("?")[0].split(", ")
    assert hint and hint == suggest_names(typo)
    for name in hint:
        vs.load_model(name, pretrained=False, device="meta")                 # no KeyError: it loads as written
    if typo == "demo_vit":
        assert "demo-vit" in hint


@pytest.fixture
def entry_1000(monkeypatch):
    e = ModelEntry(name="vit_cls_test.unit", family="vit", size="Ti/8", config=vs.ViTConfig(**TINY),
                   preprocess=PreprocessConfig(input_size=32), sources=(WeightSource("hub", "timm/none", "timm"),))
    monkeypatch.setitem(registry._REGISTRY, e.name, e)
    return e


def test_checkpoint_with_a_100_class_head_loads_through_weights(tmp_path, entry_1000):
    """vilas2023's CIFAR-100 model: timm keys under a "model." prefix, a 100-class head on a 1000-class name."""
    torch.manual_seed(0)
    ft = HookedViT(vs.ViTConfig(**{**TINY, "num_classes": 100})).eval()
    torch.save({f"model.{k}": v for k, v in _timm_names(ft.state_dict()).items()}, tmp_path / "cifar100.pt")
    m = vs.load_model(entry_1000.name, weights=tmp_path / "cifar100.pt")
    assert m.cfg.num_classes == 100 and m.cfg.meta["num_classes_from_weights"] == 100
    assert m.meta["format"] == "timm"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(m(x), ft(x), atol=0, rtol=0)
    # the registry's own entry for it has no source: it asks for the file
    with pytest.raises(ValueError, match="weights=PATH"):
        vs.load_model("vit_cifar_16")


def test_a_wrong_architecture_still_fails_strictly(tmp_path, entry_1000):
    torch.manual_seed(0)
    other = HookedViT(vs.ViTConfig(**{**TINY, "embed_dim": 48, "num_classes": 100}))
    torch.save(_timm_names(other.state_dict()), tmp_path / "other.pt")
    with pytest.raises(Exception, match="shape"):
        vs.load_model(entry_1000.name, weights=tmp_path / "other.pt")
