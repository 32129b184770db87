"""SAEs of centred patch tokens (``centre="image"``): every path that feeds the SAE (the training stream, the
measured activations, the browser, the splice) gives it each patch token less its image's mean patch token, checked
against a plain loop over images and patches; the splice adds the mean back."""
import numpy as np
import pytest
import torch

from sae_fixtures import planted, write_store
from vitscope import HookedViT, ViTConfig
from vitscope.analysis.sae.models import SAE, SAEConfig


def loop_centred(x: np.ndarray) -> np.ndarray:
    """(N, T, d) -> each token less the mean of its image's T tokens, one image and one token at a time."""
    out = np.empty_like(x, dtype=np.float64)
    for i in range(x.shape[0]):
        m = np.zeros(x.shape[2])
        for t in range(x.shape[1]):
            m += x[i, t]
        m /= x.shape[1]
        for t in range(x.shape[1]):
            out[i, t] = x[i, t] - m
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x, _ = planted(n_images=60, tokens=8, d=16, atoms=32, active=2)
    x = x + np.random.default_rng(1).normal(size=(60, 1, 16)).astype(np.float32) * 3     # an offset per image
    p = write_store(tmp_path_factory.mktemp("centre") / "store", {("resid_post", 2, "patches"): x,
                                                                   ("resid_post", 2, "cls"): x[:, 0]})
    return p, x


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedViT(ViTConfig(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, num_classes=5)).eval()


def test_the_stream_gives_each_patch_less_its_images_mean(store):
    from vitscope.analysis.sae.data import StoreStream
    from vitscope.features import open_store

    path, x = store
    ref = loop_centred(x)
    st = StoreStream(open_store(path), "resid_post", [2], "patches", batch_size=32, chunk_images=10, seed=0,
                     centre="image")
    imgs = np.arange(10, 20)
    np.testing.assert_allclose(st.read_chunk(imgs)[2].numpy(), ref[10:20].reshape(-1, 16), atol=1e-5)
    scattered = np.array([3, 17, 41])                       # the initialisation sample reads images one by one
    np.testing.assert_allclose(st.read_chunk(scattered)[2].numpy(), ref[scattered].reshape(-1, 16), atol=1e-5)
    # an epoch's batches are rows of the centred store, each at most once
    rows = torch.cat([b[2] for _, b in st(0, st.steps_per_epoch)]).numpy()
    d = np.abs(rows[:, None, :] - ref.reshape(-1, 16)[None]).max(-1)
    assert (d.min(1) < 1e-5).all() and len(np.unique(d.argmin(1))) == len(rows)


def test_a_centred_sae_trains_on_centred_rows_and_keeps_its_centre(store, tmp_path):
    from vitscope.analysis.sae import TrainOptions, load_sae, train_saes

    path, x = store
    opts = TrainOptions(blocks="2", arch="topk", width=(32,), k=(2,), lr=(1e-3,), steps=20, batch_size=64,
                        chunk_images=20, warmup=5, centre="image", device="cpu", init_rows=480)
    sae = next(iter(train_saes(path, opts, out=tmp_path / "s").values()))
    assert sae.cfg.centre == "image"
    # the normalisation is measured on what the SAE reads: the centred rows (mean squared norm = d after it)
    ref = loop_centred(x).reshape(-1, 16)
    assert abs(float(sae.scale[0]) ** 2 * (ref ** 2).sum(1).mean() / 16 - 1) < 0.05
    back = load_sae(next(p for p in (tmp_path / "s").iterdir() if p.is_dir() and p.name != "checkpoint"))
    assert back.cfg.centre == "image"


@pytest.mark.parametrize("kw, needle", [
    (dict(centre="image", tokens="cls"), "tokens"), (dict(centre="patch"), "centre"),
])
def test_what_centring_cannot_do_is_one_line(kw, needle):
    from vitscope.analysis.api import OptionError
    from vitscope.analysis.sae import TrainOptions

    with pytest.raises((OptionError, ValueError)) as e:
        TrainOptions(**kw)
    assert needle in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="centre"):
        SAEConfig(d_in=4, width=8, **kw)


def centred_identity_sae(d, block=1):
    """The identity 'SAE' of test_sae_splice (x_hat = relu(x) - relu(-x) = x), reading centred patch tokens."""
    s = SAE(SAEConfig(d_in=d, width=2 * d, arch="relu", block=(block,), centre="image"))
    eye = torch.eye(d)
    with torch.no_grad():
        s.W_enc[0] = torch.cat([eye, -eye], 1)
        s.W_dec[0] = torch.cat([eye, -eye], 0)
    return s


def test_the_spliced_centred_identity_sae_is_the_original_model(model):
    x = torch.randn(3, 3, 32, 32)
    sae = centred_identity_sae(32)
    with torch.no_grad():
        ref = model(x)
        _, c0 = model.run_with_cache(x, names_filter="blocks.1.hook_resid_post")
        with sae.hooks(model, 1) as m:
            got = m(x)
            _, cache = m.run_with_cache(x, names_filter=["blocks.1.sae.hook_latents", "blocks.1.sae.hook_recons"])
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)       # (x - mean) + mean: equal to rounding
    patches = c0["blocks.1.hook_resid_post"][:, 1:].numpy()
    c = loop_centred(patches)
    want = np.concatenate([np.maximum(c, 0), np.maximum(-c, 0)], -1)
    np.testing.assert_allclose(cache["blocks.1.sae.hook_latents"].numpy(), want, atol=1e-5)
    np.testing.assert_allclose(cache["blocks.1.sae.hook_recons"].numpy(), patches, atol=1e-5)
    with pytest.raises(ValueError, match="patch tokens only"):
        with sae.hooks(model, 1, tokens="all"):
            pass


def test_measured_and_browsed_latents_are_those_of_the_centred_tokens(model):
    from vitscope.analysis.sae.browse import sae_latents
    from vitscope.analysis.sae.factors import factor_bases

    torch.manual_seed(1)
    sae = SAE(SAEConfig(d_in=32, width=24, arch="topk", k=(4,), block=(2,), centre="image"))
    with torch.no_grad():
        sae.W_enc.normal_()
        sae.b_dec.normal_()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        _, c = model.run_with_cache(x, names_filter="blocks.2.hook_resid_post")
    raw = c["blocks.2.hook_resid_post"][:, 1:].numpy()
    centred = torch.from_numpy(loop_centred(raw).reshape(-1, 32)).float()
    want = sae.encode(centred).detach().numpy()
    bases = factor_bases(model, sae, x, 2)
    np.testing.assert_allclose(bases["sae"][0], want, atol=1e-4)
    np.testing.assert_allclose(bases["neurons"][0], raw.reshape(-1, 32), atol=1e-6)        # the raw stream
    np.testing.assert_allclose(bases["centred_neurons"][0], centred.numpy(), atol=1e-5)    # what the SAE reads
    lat, own = sae_latents(sae, model, x)
    assert own is None
    np.testing.assert_allclose(lat.reshape(-1, 24).numpy(), want, atol=1e-4)


def test_a_checkpoint_from_before_centring_resumes_as_uncentred(store, tmp_path):
    """A checkpoint whose options have no ``centre`` (written before the option existed) resumes a run without
    centring, and is refused for a centred one."""
    import json

    from vitscope.analysis.sae import TrainOptions, Trainer

    path, _ = store
    kw = dict(blocks="2", arch="topk", width=(32,), k=(2,), lr=(1e-3,), steps=20, batch_size=64, chunk_images=20,
              warmup=5, init_rows=480, checkpoint_every=10, device="cpu")
    Trainer(path, TrainOptions(**kw), out=tmp_path / "run").run()
    state = tmp_path / "run" / "checkpoint" / "state.json"
    meta = json.loads(state.read_text())
    del meta["options"]["centre"]
    state.write_text(json.dumps(meta))
    assert Trainer(path, TrainOptions(**kw), out=tmp_path / "run").try_resume()
    with pytest.raises(ValueError, match="other training options"):
        Trainer(path, TrainOptions(**kw, centre="image"), out=tmp_path / "run").try_resume()
