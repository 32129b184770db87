"""The blocks' linear kernels: oneDNN with fused bias + GELU against F.linear and the activations' definitions."""
import math

import pytest
import torch
import torch.nn.functional as F

from vitscope import HookedViT, ViTConfig
from vitscope.models import kernels

needs_onednn = pytest.mark.skipif(not kernels.onednn_available(), reason="this PyTorch build has no oneDNN linear")


def reference(x, w, b, act):
    """The definitions, written out: erf GELU, tanh GELU, QuickGELU."""
    y = x @ w.T + (0 if b is None else b)
    if act == "gelu":
        return 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))
    if act == "gelu_tanh":
        return 0.5 * y * (1 + torch.tanh(math.sqrt(2 / math.pi) * (y + 0.044715 * y ** 3)))
    if act == "quick_gelu":
        return y / (1 + torch.exp(-1.702 * y))
    return y


@pytest.mark.parametrize("impl", ["auto", "torch", pytest.param("onednn", marks=needs_onednn)])
@pytest.mark.parametrize("act", [None, "gelu", "gelu_tanh", "quick_gelu"])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_definition(impl, act, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 17, 24, generator=g, dtype=torch.float64)
    w = torch.randn(40, 24, generator=g, dtype=torch.float64) / 5
    b = torch.randn(40, generator=g, dtype=torch.float64) if bias else None
    want = reference(x, w, b, act)
    with torch.inference_mode():
        got = kernels.linear(x.float(), w.float(), None if b is None else b.float(), act=act, impl=impl)
    assert got.shape == (3, 17, 40) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


@needs_onednn
def test_onednn_takes_strided_input_and_2d_input():
    x = torch.randn(24, 10, 6).transpose(0, 1)                  # 10, 24, 6 -> non-contiguous
    w, b = torch.randn(5, 6), torch.randn(5)
    with torch.inference_mode():
        torch.testing.assert_close(kernels.linear(x, w, b, "gelu", impl="onednn"), F.gelu(F.linear(x, w, b)))
        torch.testing.assert_close(kernels.linear(x[0], w, b, impl="onednn"), F.linear(x[0], w, b))


@needs_onednn
def test_auto_uses_onednn_only_where_it_can():
    x, w = torch.randn(4, 8), torch.randn(3, 8)
    with torch.inference_mode():
        assert kernels.onednn_usable(x, w) is None
        assert "float32" in kernels.onednn_usable(x.double(), w.double())
    with torch.no_grad():
        assert kernels.onednn_usable(x, w) is None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert "autocast" in kernels.onednn_usable(x, w)
        assert kernels.linear(x, w, None).dtype == torch.bfloat16          # autocast still applies
    assert "autograd" in kernels.onednn_usable(x, w.requires_grad_())


def test_auto_keeps_autograd_exact():
    """With autograd on, "auto" runs F.linear, so gradients are PyTorch's own."""
    w = torch.randn(6, 8, requires_grad=True)
    x = torch.randn(2, 8, requires_grad=True)
    kernels.linear(x, w, None, act="gelu").sum().backward()
    gx, gw = x.grad.clone(), w.grad.clone()
    x.grad = w.grad = None
    F.gelu(F.linear(x, w)).sum().backward()
    assert torch.equal(gx, x.grad) and torch.equal(gw, w.grad)


@needs_onednn
def test_forced_onednn_with_autograd_is_a_clear_error():
    with pytest.raises(RuntimeError, match="no backward"):
        kernels.linear(torch.randn(2, 8), torch.randn(6, 8, requires_grad=True), None, impl="onednn")


def test_apply_linear_calls_modules_with_hooks_or_of_other_types():
    lin = torch.nn.Linear(8, 4)
    seen = []
    lin.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.inference_mode():
        y = kernels.apply_linear(lin, torch.randn(3, 8), act="gelu")
    assert len(seen) == 1 and torch.equal(y, F.gelu(seen[0]))

    class Doubled(torch.nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    d, x = Doubled(8, 4), torch.randn(3, 8)
    with torch.inference_mode():
        torch.testing.assert_close(kernels.apply_linear(d, x), 2 * F.linear(x, d.weight, d.bias))


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "quick_gelu"])
def test_model_paths_agree_and_hooks_see_the_same_activations(act):
    torch.manual_seed(0)
    m = HookedViT(ViTConfig(embed_dim=48, depth=2, num_heads=3, patch_size=8, img_size=32, num_classes=5,
                            act=act)).eval()
    x = torch.randn(2, 3, 32, 32)
    names = ["blocks.1.mlp.hook_pre", "blocks.1.mlp.hook_post", "blocks.1.hook_resid_post"]
    with torch.inference_mode():
        m.set_linear_impl("torch")
        ref, ref_cache = m.run_with_cache(x, names_filter=names)
        m.set_linear_impl("auto")
        out = m(x)
        _, post_only = m.run_with_cache(x, names_filter=names[1:])    # hook_pre off: the activation is fused
        _, cache = m.run_with_cache(x, names_filter=names)            # hook_pre on: GEMM, hook, activation
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for n in names:
        torch.testing.assert_close(cache[n], ref_cache[n], rtol=1e-5, atol=1e-5)
    for n in names[1:]:
        torch.testing.assert_close(post_only[n], ref_cache[n], rtol=1e-5, atol=1e-5)


def test_set_linear_impl_rejects_unknown_names():
    m = HookedViT(ViTConfig(embed_dim=16, depth=1, num_heads=2, patch_size=8, img_size=16))
    with pytest.raises(ValueError, match="linear impl must be one of"):
        m.set_linear_impl("mkl")
