"""extract_features + the store: read back equals what run_with_cache produced, dtypes, skips, safety."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import vitscope.features as vf
from vitscope import HookedViT, ViTConfig
from vitscope.features import IncompatibleStoreError, IncompleteStoreError, extract_features

N = 21


class ToyData(torch.utils.data.Dataset):
    """Deterministic images; ``bad`` indices fail like the data layer's skip policy (a record in the image slot)."""

    def __init__(self, n=N, size=32, bad=(), raise_at=None, transform="a"):
        self.n, self.size, self.bad, self.raise_at = n, size, set(bad), raise_at
        self.labels = np.arange(n) % 3
        self.ids = [f"img{i:03d}.png" for i in range(n)]
        self.paths = list(self.ids)
        self.classes = ["a", "b", "c"]
        self.transform = SimpleNamespace(cfg=SimpleNamespace(to_dict=lambda: {"mean": transform}))

    def __len__(self):
        return self.n

    def image(self, i):
        return torch.randn(3, self.size, self.size, generator=torch.Generator().manual_seed(1000 + i))

    def __getitem__(self, i):
        if self.raise_at is not None and i >= self.raise_at:
            raise RuntimeError("simulated crash")
        if i in self.bad:
            return SimpleNamespace(id=self.ids[i], reason="truncated file", kind="truncated"), -1, i
        return self.image(i), int(self.labels[i]), i


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    args = dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=4, num_classes=10)
    args.update(kw)
    return HookedViT(ViTConfig(**args)).eval()


def reference(model, ds, hooks):
    x = torch.stack([ds.image(i) for i in range(ds.n)])
    with torch.no_grad():
        _, cache = model.run_with_cache(x, names_filter=hooks)
    return cache


def test_read_back_equals_run_with_cache(tmp_path):
    m = tiny(num_registers=2)
    ds = ToyData()
    store = extract_features(m, ds, tmp_path / "s", layers="0,2", sites="resid_post,ln2,mlp_out,ln_final,mlp.hook_pre",
                             tokens="cls,mean,cls+mean,registers,patches,all", batch_size=8, progress=False)
    cache = reference(m, ds, lambda n: True)
    for site, hook in [("resid_post", "blocks.{i}.hook_resid_post"), ("ln2", "blocks.{i}.ln2.hook_normalized"),
                       ("mlp_out", "blocks.{i}.hook_mlp_out")]:
        for i in (0, 2):
            t = cache[hook.format(i=i)].numpy()                       # N, T, D; [CLS] R0 R1 p0..p15
            cls, mean = t[:, 0], t[:, 3:].mean(1)
            np.testing.assert_allclose(store[site, i, "cls"], cls, atol=1e-5)
            np.testing.assert_allclose(store[site, i, "mean"], mean, atol=1e-5)
            np.testing.assert_allclose(store[site, i, "cls+mean"], np.stack([cls, mean], 1), atol=1e-5)
            np.testing.assert_allclose(store[site, i, "registers"], t[:, 1:3], atol=1e-5)
            np.testing.assert_allclose(store[site, i, "patches"], t[:, 3:], atol=1e-5)
            np.testing.assert_allclose(store.get(site, i, "all"), t, atol=1e-5)
    pre = cache["blocks.2.mlp.hook_pre"].numpy()                     # N, T, 4D
    np.testing.assert_allclose(store["mlp.hook_pre", 2, "cls"], pre[:, 0], atol=1e-5)
    np.testing.assert_allclose(store["blocks.{i}.mlp.hook_pre", 2, "mean"], pre[:, 3:].mean(1), atol=1e-5)
    fin = cache["ln_final.hook_normalized"].numpy()
    np.testing.assert_allclose(store["ln_final", "cls"], fin[:, 0], atol=1e-5)
    np.testing.assert_allclose(store["ln_final.hook_normalized", "mean"], fin[:, 3:].mean(1), atol=1e-5)
    # full hook names address the same arrays; arrays are lazy memmaps until load()
    assert isinstance(store["blocks.2.hook_resid_post", "cls"], np.memmap)
    assert type(store.load("resid_post", 2, "cls")) is np.ndarray
    np.testing.assert_array_equal(store.labels, ds.labels)
    assert store.ids == ds.ids and store.classes == ["a", "b", "c"] and store.valid.all()
    # reopening from disk gives the same arrays; nothing of the model is left attached
    again = vf.open(tmp_path / "s")
    np.testing.assert_array_equal(again["resid_post", 2, "cls"], store["resid_post", 2, "cls"])
    assert all(not hp._forward_hooks for hp in m.hook_dict.values())
    man = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert man["complete"] and man["n"] == N and man["model"]["weights_hash_source"] == "state_dict"
    assert man["preprocessing"]["mean"] == "a" and man["labels"] == ds.labels.tolist()


def test_forward_stops_after_last_needed_block(tmp_path):
    m = tiny()
    ran = []
    handles = [blk.register_forward_hook(lambda mod, i, o, k=k: ran.append(k)) for k, blk in enumerate(m.blocks)]
    extract_features(m, ToyData(n=4), tmp_path / "s", layers="0,1", tokens="cls", batch_size=4, progress=False)
    for h in handles:
        h.remove()
    assert set(ran) == {0, 1}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_dtypes(tmp_path, dtype):
    m = tiny()
    ds = ToyData(n=9)
    store = extract_features(m, ds, tmp_path / "s", layers="3", tokens="cls,mean", batch_size=4, dtype=dtype,
                             progress=False)
    t = reference(m, ds, "blocks.3.hook_resid_post")["blocks.3.hook_resid_post"]
    arr = store["resid_post", 3, "mean"]
    assert arr.dtype == np.float16 and store.dtype == dtype
    want = t[:, 1:].mean(1)
    if dtype == "bfloat16":
        want = want.to(torch.bfloat16)
    np.testing.assert_array_equal(np.asarray(arr), want.to(torch.float16).numpy()) if dtype == "bfloat16" else \
        np.testing.assert_allclose(np.asarray(arr, np.float32), want.numpy(), rtol=1e-3, atol=1e-3)


def test_bad_images_are_recorded_and_left_zero(tmp_path):
    m = tiny()
    ds = ToyData(bad=(2, 8, 9, 10, 11))                      # 8..11 is a whole batch of 4
    store = extract_features(m, ds, tmp_path / "s", layers="1", tokens="cls", batch_size=4, progress=False)
    assert [r["index"] for r in store.skipped] == [2, 8, 9, 10, 11]
    assert store.skipped[0]["id"] == "img002.png" and store.skipped[0]["kind"] == "truncated"
    assert store.run["skipped"] == 5 and store.run["images"] == N - 5
    valid = store.valid
    assert valid.sum() == N - 5 and not valid[[2, 8, 11]].any()
    arr = store["resid_post", 1, "cls"]
    assert not np.asarray(arr[[2, 8, 9, 10, 11]]).any()
    assert (store.labels[[2, 8]] == -1).all()
    t = reference(m, ds, "blocks.1.hook_resid_post")["blocks.1.hook_resid_post"][:, 0].numpy()
    np.testing.assert_allclose(store.load("resid_post", 1, "cls", valid_only=True), t[valid], atol=1e-5)


def test_incompatible_store_is_refused(tmp_path):
    out = tmp_path / "s"
    extract_features(tiny(seed=0), ToyData(n=6), out, layers="1", tokens="cls", batch_size=4, progress=False)
    before = np.array(vf.open(out)["resid_post", 1, "cls"])
    with pytest.raises(IncompatibleStoreError, match="weights"):
        extract_features(tiny(seed=1), ToyData(n=6), out, layers="1", tokens="cls", batch_size=4, progress=False)
    with pytest.raises(IncompatibleStoreError, match="preprocessing"):
        extract_features(tiny(seed=0), ToyData(n=6, transform="b"), out, layers="1", tokens="cls", batch_size=4,
                         progress=False)
    with pytest.raises(IncompatibleStoreError, match="dataset"):
        extract_features(tiny(seed=0), ToyData(n=7), out, layers="1", tokens="cls", batch_size=4, progress=False)
    with pytest.raises(IncompatibleStoreError, match="token reductions"):
        extract_features(tiny(seed=0), ToyData(n=6), out, layers="1", tokens="mean", batch_size=4, progress=False)
    np.testing.assert_array_equal(vf.open(out)["resid_post", 1, "cls"], before)      # untouched
    # the same request on a complete store is a no-op; resume=False starts over with the new model
    s = extract_features(tiny(seed=0), ToyData(n=6), out, layers="1", tokens="cls", batch_size=4, progress=False)
    assert s.run["images"] == 0
    s = extract_features(tiny(seed=1), ToyData(n=6), out, layers="1", tokens="cls", batch_size=4, resume=False,
                         progress=False)
    assert s.run["images"] == 6 and not np.array_equal(np.asarray(s["resid_post", 1, "cls"]), before)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("x")
    with pytest.raises(IncompatibleStoreError, match="not a vitscope feature store"):
        extract_features(tiny(), ToyData(n=6), tmp_path / "other", layers="1", tokens="cls", progress=False)


def test_incomplete_store_refused_then_resumed(tmp_path):
    out = tmp_path / "s"
    m = tiny()
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract_features(m, ToyData(raise_at=13), out, layers="all", tokens="cls,mean", batch_size=4,
                         progress=False)
    with pytest.raises(IncompleteStoreError, match="incomplete"):
        vf.open(out)
    part = vf.open(out, allow_incomplete=True)
    assert not part.complete and part.valid.sum() == 12 and part.valid[:12].all()
    s = extract_features(m, ToyData(), out, layers="all", tokens="cls,mean", batch_size=4, progress=False)
    assert s.complete and s.run["images"] == N - 12 and s.run["already_done"] == 12
    fresh = extract_features(m, ToyData(), tmp_path / "fresh", layers="all", tokens="cls,mean", batch_size=4,
                             progress=False)
    for key in fresh.keys():
        np.testing.assert_array_equal(s[key], fresh[key])
    assert not (out / "progress").exists()


@pytest.mark.slow
def test_compile_and_autocast_cpu(tmp_path, monkeypatch):
    m = tiny(depth=2)
    ds = ToyData(n=8)
    ref = extract_features(m, ds, tmp_path / "ref", layers="0,1", tokens="cls,mean", batch_size=4, progress=False)
    # torch.compile with the eager backend: checks that dynamo captures the reduction hooks (no inductor build)
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager"))
    comp = extract_features(m, ds, tmp_path / "c", layers="0,1", tokens="cls,mean", batch_size=4, compile=True,
                            progress=False)
    monkeypatch.undo()
    amp = extract_features(m, ds, tmp_path / "a", layers="0,1", tokens="cls,mean", batch_size=4, autocast="bf16",
                           progress=False)
    for key in ref.keys():
        np.testing.assert_allclose(comp[key], ref[key], atol=1e-5)
        np.testing.assert_allclose(amp[key], ref[key], atol=0.1, rtol=0.05)
    with pytest.raises(ValueError, match="autocast"):
        extract_features(m, ds, tmp_path / "x", autocast="int8", progress=False)


def test_other_input_size_uses_that_grid(tmp_path):
    m = tiny()                                                         # built for 32 px (4x4 patches)
    ds = ToyData(n=5, size=48)                                         # 6x6 patches, position embedding resampled
    store = extract_features(m, ds, tmp_path / "s", layers="3", tokens="patches,mean", batch_size=4,
                             progress=False)
    t = reference(m, ds, "blocks.3.hook_resid_post")["blocks.3.hook_resid_post"].numpy()
    assert store["resid_post", 3, "patches"].shape == (5, 36, 32) and store.manifest["input_shape"] == [3, 48, 48]
    np.testing.assert_allclose(store["resid_post", 3, "patches"], t[:, 1:], atol=1e-5)
    np.testing.assert_allclose(store["resid_post", 3, "mean"], t[:, 1:].mean(1), atol=1e-5)


@pytest.mark.parametrize("bad", [dict(layers="9"), dict(sites=("nowhere",)), dict(tokens=("median",))])
def test_a_bad_plan_writes_nothing(tmp_path, bad):
    """A block the model lacks, an unknown site or token reduction: one line, and no folder (not even a lock)."""
    out = tmp_path / "store"
    with pytest.raises(ValueError) as e:
        extract_features(tiny(), ToyData(), out, **bad)
    assert "\n" not in str(e.value) and not out.exists()
