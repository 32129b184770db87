"""Video heat maps (mp4, GIF, frame folders), position-embedding similarity and patch-embedding filters."""
import numpy as np
import pytest
import torch
from PIL import Image

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.attention import posembed as PE
from vitscope.analysis.attention import video as V
from vitscope.analysis.attention.maps import attention_maps_from_model


def make_model(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = ViTConfig(**{**dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=10), **kw})
    return HookedViT(cfg).eval()


def frames(n=5, h=36, w=52):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(n)]


def test_frame_to_tensor_geometry():
    model = make_model()
    x, arr = V.frame_to_tensor(frames(1)[0], model)            # short side 36 -> 32, long 52 -> 46 -> 40
    assert x.shape == (3, 32, 40) and arr.shape == (32, 40, 3)
    x, _ = V.frame_to_tensor(frames(1)[0], model, short_side=48)
    assert x.shape[1] % 8 == 0 and x.shape[2] % 8 == 0 and x.shape[1] == 48


def test_video_maps_equal_per_frame_reference(tmp_path):
    model = make_model(num_registers=1, register_block=1, register_location="end")
    fr = frames(5)
    got = list(V.video_attention_maps(model, iter(fr), block=-1, query="reg0", fusion="max", batch_size=2))
    assert len(got) == 5
    for f, (arr, m) in zip(fr, got):
        x, arr2 = V.frame_to_tensor(f, model)
        want = attention_maps_from_model(model, x[None], block=-1, query="reg0", fusion="max")[0]
        np.testing.assert_allclose(m, want.numpy(), atol=1e-6)
        np.testing.assert_array_equal(arr, arr2)
        assert m.shape == (4, 5)                               # the 32 x 40 frame's grid
    with pytest.raises(ValueError, match="before block 1"):
        next(V.video_attention_maps(model, iter(fr), block=0, query="reg0"))


@pytest.mark.parametrize("fmt", ["mp4", "gif", "folder"])
def test_attention_video_end_to_end(tmp_path, fmt):
    model = make_model()
    fr = frames(6, 40, 48)
    if fmt == "folder":
        src = tmp_path / "frames_in"
        src.mkdir()
        for k, f in enumerate(fr):
            Image.fromarray(f).save(src / f"{k:03d}.png")
    else:
        src = V.write_video(fr, tmp_path / f"in.{fmt}", fps=5)
    out = tmp_path / "out" / "heat.gif"
    res = V.attention_video(model, src, out, progress=False, step=1)
    assert res["n_frames"] == 6 and out.exists()
    assert len(list(res["frames_dir"].glob("*.png"))) == 6
    assert res["maps"].shape == (6, 4, 4)
    back, fps, n = V.read_frames(out)
    assert len(list(back)) == 6 and n == 6 and abs(fps - (5 if fmt != "folder" else 10)) < 0.5
    back, fps, n = V.read_frames(src, step=2)
    assert n == 3 and len(list(back)) == 3
    res = V.attention_video(model, src, tmp_path / "out" / "heat.mp4", progress=False, layout="side",
                            max_frames=4, save_frames=False)
    back, fps, n = V.read_frames(tmp_path / "out" / "heat.mp4")
    first = next(back)
    assert first.shape[:2] == (32, 64)                         # 40 x 48 -> a 32 x 32 crop, then frame | heat map
    assert res["n_frames"] == 4


def test_read_frames_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        V.read_frames(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        V.read_frames(tmp_path / "empty")
    with pytest.raises(ValueError, match="step"):
        V.read_frames(tmp_path / "empty", step=0)
    with pytest.raises(ValueError, match="must end in"):
        V.write_video(frames(1), tmp_path / "x.txt")


def test_position_similarity_matches_reference():
    model = make_model()
    sim = PE.position_similarity(model)
    pe = model.pos_embed[0, 1:].detach().double().numpy()     # CLS entry first in timm's layout
    for a in range(16):
        for b in range(16):
            want = pe[a] @ pe[b] / np.linalg.norm(pe[a]) / np.linalg.norm(pe[b])
            assert abs(sim[a // 4, a % 4, b // 4, b % 4] - want) < 1e-9
    assert np.allclose(np.einsum("ijij->ij", sim), 1.0)
    sin = make_model(pos_embed="sincos")
    s2 = PE.position_similarity(sin, grid=(3, 5))
    assert s2.shape == (3, 5, 3, 5)
    with pytest.raises(ValueError, match="no absolute position embedding"):
        PE.position_similarity(make_model(pos_embed="none"))


def test_patch_filters_against_covariance_eigenvectors():
    model = make_model()
    w = model.patch_embed.proj.weight.detach().double().numpy().reshape(32, -1)
    wc = w - w.mean(0)
    evals, evecs = np.linalg.eigh(wc.T @ wc)                   # principal axes = top covariance eigenvectors
    comps = evecs[:, ::-1][:, :5].T
    got = PE.patch_embedding_filters(model, n=5, mode="pca")
    assert got.shape == (5, 8, 8, 3)
    for k in range(5):
        img = comps[k].reshape(3, 8, 8).transpose(1, 2, 0)
        for sign in (1, -1):                                 # a component's sign is arbitrary
            v = sign * img
            v = (v - v.min()) / (v.max() - v.min())
            if np.allclose(v, got[k], atol=1e-6):
                break
        else:
            raise AssertionError(f"component {k} differs")
    raw = PE.patch_embedding_filters(model, n=3, mode="raw")
    f0 = w[0].reshape(3, 8, 8).transpose(1, 2, 0)
    np.testing.assert_allclose(raw[0], (f0 - f0.min()) / (f0.max() - f0.min()), atol=1e-9)
