"""SAE formats: vitscope's round trip, and SAELens' / saev's layouts written by the test and read back, each
checked against the encoder those libraries define (written out here)."""
import io
import json

import pytest
import torch

from vitscope.analysis.sae import SAE, SAEConfig, load_sae, save_sae


def _weights(d=6, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d, w, generator=g), "b_enc": torch.randn(w, generator=g),
            "W_dec": torch.randn(w, d, generator=g), "b_dec": torch.randn(d, generator=g)}


def test_round_trip(tmp_path):
    s = SAE(SAEConfig(d_in=6, width=10, arch="jumprelu", block=(2,)))
    with torch.no_grad():
        for p in s.parameters():
            p.copy_(torch.randn_like(p))
        s.scale.fill_(1.7)
    save_sae(s, tmp_path / "s")
    back = load_sae(tmp_path / "s")
    x = torch.randn(4, 6)
    assert torch.equal(back.reconstruct(x), s.reconstruct(x)) and back.cfg.block == (2,)


@pytest.mark.parametrize("arch, apply_b_dec", [("standard", True), ("standard", False), ("topk", True),
                                               ("jumprelu", True)])
def test_saelens_folder(tmp_path, arch, apply_b_dec):
    from safetensors.torch import save_file

    t = _weights()
    if arch == "jumprelu":
        t["threshold"] = torch.rand(10) * 0.5
    save_file(t, str(tmp_path / "sae_weights.safetensors"))
    cfg = {"d_in": 6, "d_sae": 10, "architecture": arch, "apply_b_dec_to_input": apply_b_dec,
           "hook_name": "blocks.4.hook_resid_post", "activation_fn_kwargs": {"k": 3} if arch == "topk" else {}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    x = torch.randn(5, 6)
    pre = (x - t["b_dec"] * apply_b_dec) @ t["W_enc"] + t["b_enc"]       # SAELens' encode
    if arch == "standard":
        z = pre.relu()
    elif arch == "topk":
        v, i = pre.topk(3, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, v.relu())
    else:
        z = pre * (pre > t["threshold"])
    torch.testing.assert_close(sae.encode(x), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), z @ t["W_dec"] + t["b_dec"], rtol=1e-5, atol=1e-5)
    assert sae.cfg.block == (4,) and sae.cfg.site == "resid_post"


@pytest.mark.parametrize("hook, block, site", [("blocks.7.hook_mlp_out", 7, "mlp_out"),
                                               ("blocks.2.hook_resid_pre", 2, "resid_pre"),
                                               ("blocks.5.mlp.hook_post", 5, "mlp.hook_post")])
def test_saelens_hook_name_gives_block_and_site(tmp_path, hook, block, site):
    from safetensors.torch import save_file

    save_file(_weights(), str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 6, "d_sae": 10, "hook_name": hook}))
    sae = load_sae(tmp_path)
    assert sae.cfg.block == (block,) and sae.cfg.site == site
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 6, "d_sae": 10, "hook_name": "blocks.1.hook_nowhere"}))
    with pytest.raises(ValueError, match="not a block hook vitscope has"):
        load_sae(tmp_path)


def _saev_file(path, header, sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    path.write_bytes((json.dumps(header) + "\n").encode() + buf.getvalue())


@pytest.mark.parametrize("header", [
    {"schema": 2, "cfg": {"d_vit": 6, "exp_factor": 2, "activation": {"cls": "TopK", "params": {"top_k": 3}}}},
    {"schema": 1, "cls": "Relu", "cfg": {"d_vit": 6, "exp_factor": 2}},
    {"schema": 1, "cls": "TopK", "cfg": {"d_vit": 6, "exp_factor": 2, "top_k": 3}},   # schema 1, saev's "1A"
    {"schema": 1, "cls": "SparseAutoencoderConfig",                                  # schema 1, saev's "1B"
     "cfg": {"d_vit": 6, "exp_factor": 2, "activation": {"cls": "TopK", "params": {"top_k": 3}}}},
    {"d_vit": 6, "exp_factor": 2, "l1_coeff": 0.1},                                  # the pre-schema header
])
def test_saev_checkpoint(tmp_path, header):
    t = _weights(w=12)
    p = tmp_path / "sae.pt"
    _saev_file(p, header, t)
    sae = load_sae(p)
    x = torch.randn(5, 6)
    pre = x @ t["W_enc"] + t["b_enc"]                                                # saev's encode
    if "TopK" in json.dumps(header):
        v, i = pre.topk(3, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, v.relu())
    else:
        z = pre.relu()
    torch.testing.assert_close(sae.encode(x), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), z @ t["W_dec"] + t["b_dec"], rtol=1e-5, atol=1e-5)


def test_unknown_layouts_are_one_line(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"\x80\x02not json")
    with pytest.raises(ValueError, match="not a saev checkpoint"):
        load_sae(tmp_path / "x.pt")
    _saev_file(tmp_path / "s3.pt", {"schema": 3, "cfg": {"d_vit": 6}}, _weights())
    with pytest.raises(ValueError, match="schema 3; vitscope reads schemas 1 and 2"):
        load_sae(tmp_path / "s3.pt")
    with pytest.raises(FileNotFoundError):
        load_sae(tmp_path / "missing")
    (tmp_path / "gated").mkdir()
    (tmp_path / "gated" / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": 6, "d_sae": 10}))
    from safetensors.torch import save_file

    save_file(_weights(), str(tmp_path / "gated" / "sae_weights.safetensors"))
    with pytest.raises(ValueError, match="gated"):
        load_sae(tmp_path / "gated")


def _saelens(tmp_path, cfg, **extra):
    from safetensors.torch import save_file

    t = {**_weights(), **extra}
    save_file(t, str(tmp_path / "sae_weights.safetensors"))
    (tmp_path / "cfg.json").write_text(json.dumps({"d_in": 6, "d_sae": 10, **cfg}))
    return t


@pytest.mark.parametrize("cfg, block, site, k", [
    # before SAELens 6 (and ViT-Prisma): hook_point / hook_point_layer / activation_fn_str
    ({"hook_point": "blocks.9.hook_mlp_out", "hook_point_layer": 9, "hook_point_head_index": None,
      "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}}, 9, "mlp_out", 3),
    ({"hook_point": "blocks.{layer}.hook_resid_post", "hook_point_layer": 3}, 3, "resid_post", None),
    # SAELens 6: the hook in "meta", k at the top level
    ({"architecture": "topk", "k": 3, "meta": {"model_name": "vit", "hook_name": "blocks.2.hook_resid_pre",
                                               "hook_layer": 2, "hook_head_index": None}}, 2, "resid_pre", 3),
])
def test_saelens_layouts_of_every_version(tmp_path, cfg, block, site, k):
    """The three cfg.json layouts SAELens has written give the same SAE: block, site and the encoder of SAELens'
    definition (pre = (x - b_dec) W_enc + b_enc; ReLU or the k largest)."""
    t = _saelens(tmp_path, cfg)
    sae = load_sae(tmp_path)
    assert sae.cfg.block == (block,) and sae.cfg.site == site
    x = torch.randn(5, 6)
    pre = (x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]
    if k is None:
        z = pre.relu()
    else:
        v, i = pre.topk(k, dim=-1)
        z = torch.zeros_like(pre).scatter(-1, i, v.relu())
    torch.testing.assert_close(sae.encode(x), z, rtol=1e-5, atol=1e-5)
    if "meta" in cfg:
        assert sae.cfg.meta["model_name"] == "vit"


def test_saelens_expected_average_scale(tmp_path):
    """``normalize_activations: expected_average_only_in``: the factor kept outside the folder is given to
    ``load_saelens``; inputs are multiplied by it and the reconstruction divided by it, as SAELens runs it."""
    from vitscope.analysis.sae import load_saelens

    t = _saelens(tmp_path, {"hook_name": "blocks.1.hook_resid_post",
                            "normalize_activations": "expected_average_only_in"})
    with pytest.raises(ValueError, match=r"scale=\.\.\."):
        load_sae(tmp_path)
    sae = load_saelens(tmp_path, scale=2.5)
    x = torch.randn(5, 6)
    z = ((2.5 * x - t["b_dec"]) @ t["W_enc"] + t["b_enc"]).relu()
    torch.testing.assert_close(sae.encode(x), z, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sae.reconstruct(x), (z @ t["W_dec"] + t["b_dec"]) / 2.5, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cfg, extra, says", [
    ({"hook_name": "blocks.1.attn.hook_z", "hook_head_index": 3}, {}, "reads one attention head"),
    ({"hook_point": "blocks.1.attn.hook_z", "hook_point_head_index": 0}, {}, "reads one attention head"),
    ({"hook_name": "blocks.1.hook_resid_post", "normalize_activations": "constant_norm_rescale"}, {},
     "normalises each input at run time"),
    ({"hook_name": "blocks.1.hook_resid_post", "normalize_activations": "layer_norm"}, {}, "at run time"),
    ({"hook_name": "blocks.1.hook_resid_post"}, {"scaling_factor": torch.full((10,), 2.0)}, "scaling factor"),
])
def test_saelens_what_vitscope_cannot_run_is_one_line(tmp_path, cfg, extra, says):
    _saelens(tmp_path, cfg, **extra)
    with pytest.raises(ValueError, match=says) as e:
        load_sae(tmp_path)
    assert "\n" not in str(e.value)
