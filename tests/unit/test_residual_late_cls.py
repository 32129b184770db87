"""Residual-CKA norm ratios with registers and a CLS that enters late: NaN (not 0.0) before CLS exists, every
block's CLS ratio kept in the array form, and patches read from where they are (not ``1:``). The reference
below indexes tokens from the config by hand: CLS first, then the registers, then the patch grid."""
import numpy as np
import pytest
import torch

from vitscope.analysis.similarity.compare import residual_cka, stream_residual_cka
from vitscope.models import HookedViT, ViTConfig
from vitscope.models.layout import token_layout


def _model():
    torch.manual_seed(0)
    cfg = ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=3,
                    num_registers=2, register_block=1, cls_block=2)
    return HookedViT(cfg).eval()


def _reference(model, x):
    """||skip|| / ||branch|| per block and token group, image mean, from a plain loop over images."""
    hooks = [f"blocks.{i}.{h}" for i in range(4) for h in ("hook_resid_pre", "hook_attn_out")]
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=hooks)
    out = {"all": [], "cls": [], "patches": []}
    for i in range(4):
        s, b = cache[f"blocks.{i}.hook_resid_pre"].double(), cache[f"blocks.{i}.hook_attn_out"].double()
        n_prefix = (1 if i >= 2 else 0) + (2 if i >= 1 else 0)       # CLS from block 2, 2 registers from block 1
        vals = {"all": [], "cls": [], "patches": []}
        for k in range(x.shape[0]):
            vals["all"].append(float(s[k].norm() / b[k].norm()))
            vals["patches"].append(float(s[k, n_prefix:].norm() / b[k, n_prefix:].norm()))
            vals["cls"].append(float(s[k, 0].norm() / b[k, 0].norm()) if i >= 2 else np.nan)
        for key, v in vals.items():
            out[key].append(np.mean(v))
    return {k: np.array(v) for k, v in out.items()}


def test_stream_norm_ratios_late_cls_and_registers():
    model = _model()
    torch.manual_seed(1)
    x = torch.randn(6, 3, 32, 32)
    res = stream_residual_cka(model, [x[:4], x[4:]], batch_size=4)
    ref = _reference(model, x)
    got = res.norm_ratios["attn"]
    assert np.isnan(got["cls"][:2]).all(), "CLS ratio before CLS enters must be NaN, not 0.0"
    for key in ("all", "cls", "patches"):
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, equal_nan=True)


def test_array_form_keeps_cls_ratio_of_late_blocks():
    model = _model()
    torch.manual_seed(2)
    x = torch.randn(5, 3, 32, 32)
    hooks = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out"]
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=[f"blocks.{i}.{h}" for i in range(4) for h in hooks])
    acts = {h: [cache[f"blocks.{i}.{h}"].numpy() for i in range(4)] for h in hooks}
    res = residual_cka(acts, [token_layout(model.cfg, i) for i in range(4)])
    ref = _reference(model, x)
    assert "cls" in res.norm_ratios["attn"], "the CLS ratio must not be dropped when block 0 has no CLS"
    for key in ("all", "cls", "patches"):
        np.testing.assert_allclose(res.norm_ratios["attn"][key], ref[key], rtol=1e-5, equal_nan=True)


def test_save_residual_csv_has_nan_before_cls(tmp_path):
    import pandas as pd

    from vitscope.viz.similarity import save_residual

    model = _model()
    x = torch.randn(4, 3, 32, 32)
    res = stream_residual_cka(model, [x], batch_size=4)
    save_residual(res, tmp_path / "r")
    df = pd.read_csv(tmp_path / "r.csv")
    assert df["norm_ratio_attn_cls"].isna().tolist() == [True, True, False, False]
    assert np.isnan(np.load(tmp_path / "r.norm_attn_cls.npy")[:2]).all()
