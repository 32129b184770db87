"""The app's patching tab: one clicked patch's effect per block equals a loop of run_with_hooks written here (the
blurred copy made from the definition), on a model with registers and a late CLS."""
import numpy as np
import pytest
import torch
from PIL import Image

import vitscope as vs
from vitscope.app import views as V


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(1)
    a = np.zeros((64, 64, 3), np.uint8) + np.array([60, 120, 90], np.uint8)
    a[20:44, 16:40] = [230, 40, 40]
    return Image.fromarray(np.clip(a.astype(int) + rng.integers(-15, 15, a.shape), 0, 255).astype(np.uint8))


@pytest.mark.slow
@pytest.mark.parametrize("site", ["resid_pre", "mlp_out"])
def test_clicked_patch_effect_per_block_equals_the_loop(site, photo):
    from scipy.ndimage import gaussian_filter

    torch.set_num_threads(1)
    m = vs.load_model("demo-vit-reg4")
    v = V.patching_view(m, photo, patch=(3, 2), corrupt="blur:0.5", site=site)
    x, _ = V.model_input(m, photo)
    xc = torch.from_numpy(gaussian_filter(x.double().numpy(), sigma=(0, 0, 4, 4), mode="reflect")).float()
    want = []
    with torch.no_grad():
        clean = m(x)
        y = clean.argmax(-1)
        mc, mx = clean[0, y].item(), m(xc)[0, y].item()
        for b in range(m.cfg.depth):
            name = f"blocks.{b}.hook_{site}"
            _, cache = m.run_with_cache(x, names_filter=name)
            pos = m.token_layout(b).patches.start + 3 * 8 + 2

            def put(a, hook, src=cache[name], pos=pos):
                a = a.clone()
                a[:, pos] = src[:, pos]
                return a
            want.append((m.run_with_hooks(xc, fwd_hooks=[(name, put)])[0, y].item() - mx) / (mc - mx))
    np.testing.assert_allclose(v.arrays["effect"], want, atol=1e-4)
    assert v.figure.shape[2] == 3 and v.images["effects"].shape[2] == 3
    assert list(v.table["block"]) == list(range(8)) and "click another patch" in v.note
    with pytest.raises(ValueError, match="outside the 8 x 8 patch grid"):
        V.patching_view(m, photo, patch=(8, 0))
