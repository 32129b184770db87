"""load_model / save_model: every dispatch path on small local files, no network.

Download paths are exercised for real: the hub path with huggingface_hub's own ``hf_hub_download`` reading
a cache folder the test fills (offline mode), the URL path with ``file://`` URLs into a temporary torch
hub dir. Nothing in vitscope is faked.
"""
import hashlib
import json
import pickle
from pathlib import Path

import pytest
import torch

import vitscope as vs
from vitscope.models import registry
from vitscope.models.converters.common import CheckpointError
from vitscope.models.loading import DownloadError, read_checkpoint, unwrap_state_dict, url_download
from vitscope.models.preprocess import PreprocessConfig
from vitscope.models.registry import ModelEntry, WeightSource
from vitscope.models.vit import HookedViT

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10)


def _tiny(**kw) -> HookedViT:
    torch.manual_seed(0)
    return HookedViT(vs.ViTConfig(**{**TINY, **kw}), PreprocessConfig(input_size=32, crop_pct=0.9)).eval()


def _same_weights(a: HookedViT, b: HookedViT) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) and sa[k].dtype == sb[k].dtype for k in sa)


def _to_timm_names(sd: dict) -> dict:
    """vitscope names -> timm names, written from timm's VisionTransformer attribute names."""
    out = {}
    for k, v in sd.items():
        k = (k.replace(".ln1.", ".norm1.").replace(".ln2.", ".norm2.")
             .replace("ln_final.", "norm.").replace("ln_pre.", "norm_pre."))
        out[k] = v.clone()
    return out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture
def tiny_entry(monkeypatch):
    """A small registry entry (timm layout weights) registered for one test."""
    def make(sources, **kw):
        e = ModelEntry(name="vit_tiny_test.unit", family="vit", size="Ti/8", config=vs.ViTConfig(**{**TINY, **kw}),
                       preprocess=PreprocessConfig(input_size=32), sources=tuple(sources), aliases=("tiny-unit",))
        monkeypatch.setitem(registry._REGISTRY, e.name, e)
        monkeypatch.setitem(registry._ALIASES, "tiny-unit", e.name)
        return e
    return make


# ----------------------------------------------------------------------------- vitscope-native folders
def test_save_load_round_trip_is_bit_exact(tmp_path):
    m = _tiny(num_registers=2, register_location="end", register_block=1, cls_block=1)
    m.meta = {"name": "my-run", "family": "trained"}
    vs.save_model(m, tmp_path / "run", extra={"epoch": 7, "val_acc": 0.5})
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["vitscope"] == m.cfg.to_dict() and cfg["extra"] == {"epoch": 7, "val_acc": 0.5}
    back = vs.load_model(tmp_path / "run")
    assert _same_weights(m, back) and back.cfg == m.cfg and not back.training
    assert back.preprocess_cfg == m.preprocess_cfg
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(m(x), back(x))
    assert back.meta["name"] == "my-run" and back.meta["extra"]["epoch"] == 7
    assert back.meta["weights_sha256"] == _sha(tmp_path / "run" / "model.safetensors")
    # the .safetensors file alone carries its config
    alone = vs.load_model(tmp_path / "run" / "model.safetensors")
    assert _same_weights(m, alone)


def test_save_load_keeps_dtype_and_casts_on_request(tmp_path):
    m = _tiny().to(torch.bfloat16)
    vs.save_model(m, tmp_path / "bf16")
    back = vs.load_model(tmp_path / "bf16")
    assert back.dtype == torch.bfloat16 and _same_weights(m, back)
    assert vs.load_model(tmp_path / "bf16", dtype=torch.float32).dtype == torch.float32


def test_save_model_rejects_unserialisable_extra(tmp_path):
    with pytest.raises(TypeError):
        vs.save_model(_tiny(), tmp_path / "x", extra={"obj": object()})
    assert not (tmp_path / "x" / "model.safetensors").exists()


def test_native_folder_random_and_input_size(tmp_path):
    m = _tiny()
    vs.save_model(m, tmp_path / "f")
    r = vs.load_model(tmp_path / "f", pretrained=False, seed=3)
    assert r.meta["source"] == "random-init" and not _same_weights(m, r)
    big = vs.load_model(tmp_path / "f", input_size=48)
    assert big.cfg.img_size == (48, 48) and big.cfg.pos_embed_grid == (4, 4)
    assert big.preprocess_cfg.input_size == (48, 48) and big.token_layout(0).grid == (6, 6)
    assert torch.equal(big.pos_embed, m.pos_embed)
    assert big(torch.zeros(1, 3, 48, 48)).shape == (1, 10)


# ----------------------------------------------------------------------------- random init from the registry
@pytest.mark.slow
def test_random_init_is_seedable_and_needs_no_network(tiny_entry):
    tiny_entry([WeightSource("hub", "timm/none", "timm")])
    a = vs.load_model("tiny-unit", pretrained=False, seed=0)
    b = vs.load_model("TINY_UNIT", pretrained=False, seed=0)
    c = vs.load_model("timm/vit_tiny_test.unit", pretrained=False, seed=1)
    assert _same_weights(a, b) and not _same_weights(a, c)
    assert a.meta == {"name": "vit_tiny_test.unit", "family": "vit", "source": "random-init",
                      "weights_sha256": None, "format": None}
    d = vs.load_model("dino-vits16", pretrained=False, seed=0)                # a real registry entry
    assert d.preprocess_cfg.mean == (0.485, 0.456, 0.406) and not d.training
    assert (d.cfg.head, d.cfg.embed_dim, d.meta["family"]) == ("none", 384, "dino")
    assert d(torch.zeros(1, 3, 224, 224)).shape == (1, 384)


def test_input_size_override_for_dinov2():
    m = vs.load_model("dinov2-vits14", pretrained=False, input_size=224, device="meta")
    assert m.cfg.img_size == (224, 224) and m.cfg.pos_embed_grid == (37, 37)
    assert m.pos_embed.shape == (1, 1 + 37 * 37, 384) and m.token_layout(0).grid == (16, 16)
    assert m.preprocess_cfg.input_size == (224, 224)
    with pytest.raises(ValueError, match="native input size"):
        vs.load_model("beit-b16", pretrained=False, input_size=384, device="meta")


@pytest.mark.parametrize("kw", [
    dict(pos_embed="sincos", head="none", num_classes=0),                        # MAE / MoCo-v3
    dict(pos_embed="none", rel_pos_bias=True, qkv_bias=False, qv_bias=True, layer_scale_init=0.1),  # BEiT
    dict(distill_token=True, head="distilled"),                                  # DeiT distilled
    dict(pre_norm=True, patch_bias=False, act="quick_gelu", head="clip_proj", num_classes=8),      # CLIP
])
def test_round_trip_every_family(tmp_path, kw):
    m = _tiny(**kw)
    with torch.no_grad():                      # non-zero tables so that a lost buffer would show
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    vs.save_model(m, tmp_path / "f")
    back = vs.load_model(tmp_path / "f")
    x = torch.randn(2, 3, 32, 32)
    assert _same_weights(m, back) and torch.equal(m(x), back(x))
    for name, buf in m.named_buffers():
        assert torch.equal(buf, dict(back.named_buffers())[name]), name


# ----------------------------------------------------------------------------- local weights files
def test_weights_file_with_a_name(tmp_path, tiny_entry):
    tiny_entry([WeightSource("hub", "timm/none", "timm")])
    m = _tiny()
    torch.save(_to_timm_names(m.state_dict()), tmp_path / "w.pth")            # a timm-layout .pth
    back = vs.load_model("tiny-unit", weights=tmp_path / "w.pth")
    assert _same_weights(m, back)
    assert back.meta["weights_sha256"] == _sha(tmp_path / "w.pth")
    torch.save({"model": m.state_dict(), "epoch": 3}, tmp_path / "wrapped.pth")   # vitscope keys, wrapped
    assert _same_weights(m, vs.load_model("tiny-unit", weights=str(tmp_path / "wrapped.pth")))


def test_official_checkpoint_layouts(tmp_path, tiny_entry):
    """MoCo-v3's and DINO's release layouts (wrappers, prefixes, heads, training args) load by name + weights."""
    import argparse

    pytest.importorskip("vitscope.models.converters.official")
    tiny_entry([WeightSource("url", "https://example.invalid/x.pth.tar", "mocov3")], head="none", num_classes=0)
    m = _tiny(head="none", num_classes=0)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    timm_sd = _to_timm_names(m.state_dict())
    moco = {"epoch": 300, "arch": "vit_small", "state_dict": {
        **{f"module.base_encoder.{k}": v for k, v in timm_sd.items()},
        **{f"module.momentum_encoder.{k}": v + 1 for k, v in timm_sd.items()},
        "module.base_encoder.head.0.weight": torch.zeros(8, 32), "module.predictor.0.weight": torch.zeros(8, 8)},
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}}
    torch.save(moco, tmp_path / "vit-s-300ep.pth.tar")
    a = vs.load_model("tiny-unit", weights=tmp_path / "vit-s-300ep.pth.tar")
    dino_full = {"teacher": {**{f"backbone.{k}": v for k, v in timm_sd.items()},
                             "head.mlp.0.weight": torch.zeros(4, 32)},
                 "student": {f"module.backbone.{k}": v - 1 for k, v in timm_sd.items()},
                 "args": argparse.Namespace(arch="vit_small", patch_size=8), "epoch": 100}
    torch.save(dino_full, tmp_path / "checkpoint.pth")
    b = vs.load_model("tiny-unit", weights=tmp_path / "checkpoint.pth")
    for got in (a, b):
        sa, sm = got.state_dict(), m.state_dict()
        assert all(torch.equal(sa[k], sm[k]) for k in sm)


def test_weights_from_a_file_url_go_through_the_torch_hub_cache(tmp_path, tiny_entry, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torchhub"))
    m = _tiny()
    src = tmp_path / "ckpt.pth"
    torch.save(m.state_dict(), src)
    tiny_entry([WeightSource("url", src.as_uri(), "timm", filename="ckpt.pth")])
    back = vs.load_model("vit_tiny_test.unit")                                # pretrained from the entry's URL
    cached = tmp_path / "torchhub" / "checkpoints" / "ckpt.pth"
    assert cached.exists() and _same_weights(m, back)
    assert back.meta["source"] == f"url:{src.as_uri()}" and back.meta["weights_sha256"] == _sha(src)
    src.unlink()                                                              # second time: from the cache
    assert _same_weights(m, vs.load_model("vit_tiny_test.unit"))


def test_weights_file_without_a_name_is_a_clear_error(tmp_path):
    torch.save(_tiny().state_dict(), tmp_path / "w.pth")
    with pytest.raises(ValueError, match=r"load_model\(NAME, weights="):
        vs.load_model(tmp_path / "w.pth")
    with pytest.raises(FileNotFoundError):
        vs.load_model(tmp_path / "missing.pth")


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")   # the pickled file is made on purpose
def test_bad_files_give_clear_errors(tmp_path, tiny_entry, capsys):
    tiny_entry([])
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch or safetensors checkpoint"):
        vs.load_model("tiny-unit", weights=tmp_path / "text.pth")
    torch.save({"w": torch.zeros(1), "obj": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match="weights_only"):
        read_checkpoint(tmp_path / "evil.pth")
    assert "unpickled!" not in capsys.readouterr().out
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps(_Evil()))
    with pytest.raises(ValueError):
        read_checkpoint(tmp_path / "raw.pkl")
    assert "unpickled!" not in capsys.readouterr().out
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="safetensors"):
        read_checkpoint(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="npz"):
        (tmp_path / "w.npz").write_bytes(b"PK")
        read_checkpoint(tmp_path / "w.npz")


def test_wrong_architecture_lists_the_keys(tmp_path, tiny_entry):
    tiny_entry([WeightSource("hub", "timm/none", "timm")])
    other = _tiny(embed_dim=64)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        vs.load_model("tiny-unit", weights=tmp_path / "other.pth")


def test_unwrap_state_dict():
    t = torch.zeros(1)
    assert unwrap_state_dict({"state_dict": {"a": t}, "epoch": 1}) == {"a": t}
    assert unwrap_state_dict({"model": {"a": t, "n": 3}}) == {"a": t}
    with pytest.raises(ValueError, match="no tensors"):
        unwrap_state_dict({"epoch": 1})


# ----------------------------------------------------------------------------- downloads, offline
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in offline mode; fill(repo, files) adds a snapshot as the hub client writes it."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    def fill(repo: str, files: dict[str, bytes]) -> Path:
        commit = "0123456789abcdef0123456789abcdef01234567"
        root = cache / f"models--{repo.replace('/', '--')}"
        (root / "refs").mkdir(parents=True)
        (root / "refs" / "main").write_text(commit)
        snap = root / "snapshots" / commit
        snap.mkdir(parents=True)
        for name, data in files.items():
            (snap / name).write_bytes(data)
        return snap
    return fill


def test_offline_error_is_one_clear_line(hub_cache, monkeypatch, tmp_path):
    with pytest.raises(DownloadError) as e:
        vs.load_model("vit-s16")
    msg = str(e.value)
    assert "\n" not in msg and "timm/vit_small_patch16_224.augreg_in21k_ft_in1k" in msg
    assert "weights=PATH" in msg and "HF_HUB_OFFLINE" in msg
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torchhub"))
    with pytest.raises(DownloadError) as e:
        vs.load_model("mocov3-s16")                                           # URL source, offline
    assert "vit-s-300ep.pth.tar" in str(e.value) and "weights=PATH" in str(e.value)
    with pytest.raises(DownloadError, match="config.json"):
        vs.load_model("hf:facebook/dinov2-small")


def test_hub_weights_from_a_filled_cache(hub_cache, tiny_entry):
    from safetensors.torch import save

    m = _tiny()
    blob = save(_to_timm_names(m.state_dict()))
    hub_cache("timm/tiny-unit-test", {"model.safetensors": blob})
    tiny_entry([WeightSource("hub", "timm/tiny-unit-test", "timm")])
    back = vs.load_model("tiny-unit")
    assert _same_weights(m, back)
    assert back.meta["source"] == "hub:timm/tiny-unit-test"
    assert back.meta["weights_sha256"] == hashlib.sha256(blob).hexdigest()


def _timm_folder_files(m: HookedViT) -> dict[str, bytes]:
    """config.json + model.safetensors as timm writes them for a hub repository (save_for_hf)."""
    from safetensors.torch import save

    cfg = {"architecture": "vit_tiny_patch16_224", "num_classes": 10, "num_features": 32, "global_pool": "token",
           "model_args": {"patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 4, "img_size": 32},
           "pretrained_cfg": {"tag": "unittest", "input_size": [3, 32, 32], "fixed_input_size": True,
                              "interpolation": "bilinear", "crop_pct": 0.95, "mean": [0.5, 0.5, 0.5],
                              "std": [0.25, 0.25, 0.25], "num_classes": 10}}
    return {"config.json": json.dumps(cfg).encode(), "model.safetensors": save(_to_timm_names(m.state_dict()))}


def test_timm_folder_and_timm_hub_name(hub_cache, tmp_path):
    pytest.importorskip("vitscope.models.converters.timm")
    m = _tiny()
    files = _timm_folder_files(m)
    folder = tmp_path / "timm-folder"
    folder.mkdir()
    for k, v in files.items():
        (folder / k).write_bytes(v)
    a = vs.load_model(folder)
    assert _same_weights(m, a) and a.meta["format"] == "timm"
    assert (a.preprocess_cfg.crop_pct, a.preprocess_cfg.interpolation, a.preprocess_cfg.std) == \
        (0.95, "bilinear", (0.25, 0.25, 0.25))
    x = torch.randn(1, 3, 32, 32)
    assert torch.allclose(a(x), m(x), atol=1e-6)
    hub_cache("timm/vit_tiny_patch16_224.unittest", files)
    b = vs.load_model("timm/vit_tiny_patch16_224.unittest")                  # through hf_hub_download's cache
    assert _same_weights(m, b) and b.meta["source"] == "hub:timm/vit_tiny_patch16_224.unittest"
    c = vs.load_model("timm/vit_tiny_patch16_224.unittest", pretrained=False, seed=0)
    assert c.cfg.embed_dim == 32 and c.meta["source"] == "random-init"


@pytest.mark.slow
def test_transformers_folder(tmp_path, hub_cache):
    transformers = pytest.importorskip("transformers")
    hfconv = pytest.importorskip("vitscope.models.converters.hf")
    torch.manual_seed(0)
    hf = transformers.ViTModel(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64), add_pooling_layer=False)
    hf.save_pretrained(tmp_path / "hf")
    a = vs.load_model(tmp_path / "hf")
    ref = hfconv.load_hf_folder(tmp_path / "hf")
    assert _same_weights(a, ref) and a.meta["format"] == "hf"
    assert a.meta["weights_sha256"] == _sha(tmp_path / "hf" / "model.safetensors")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = hf(x, output_hidden_states=True).hidden_states[-1]
    assert torch.allclose(a(x, stop_at=2), out, atol=1e-5)
    r = vs.load_model(tmp_path / "hf", pretrained=False, seed=0)
    assert r.cfg.replace(meta={}) == a.cfg.replace(meta={}) and not _same_weights(a, r)
    # the same folder as a hub repository, through hf_hub_download's cache (no preprocessor_config.json)
    hub_cache("someone/tiny-vit", {f.name: f.read_bytes() for f in (tmp_path / "hf").iterdir() if f.is_file()})
    h = vs.load_model("hf:someone/tiny-vit")
    assert _same_weights(a, h) and h.meta["source"] == "hub:someone/tiny-vit" and h.meta["name"] == "hf:someone/tiny-vit"


def test_url_download_offline_and_bad_scheme(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torchhub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="weights=PATH"):
        url_download("https://example.invalid/some/ckpt.pth")
    with pytest.raises(ValueError, match="scheme"):
        url_download("ftp://example.invalid/ckpt.pth")
    with pytest.raises(DownloadError):
        url_download((tmp_path / "absent.pth").as_uri())


def test_unknown_names():
    with pytest.raises(KeyError, match="did you mean"):
        vs.load_model("clip-b33")
    with pytest.raises(FileNotFoundError):
        vs.load_model("./no/such/folder")
    with pytest.raises(ValueError, match="not supported"):
        vs.load_model("timm/vit_small_patch16_lingbot.x", pretrained=False)


def test_list_models_is_exported():
    names = [e.name for e in vs.list_models("dino")]
    assert names == ["vit_small_patch16_224.dino", "vit_small_patch8_224.dino", "vit_base_patch16_224.dino",
                     "vit_base_patch8_224.dino"]
