"""The "SAE features" tab end to end: `vitscope app --sae DIR` on demo-vit with an SAE saved to disk, real HTTP
through ``gradio_client``; an uploaded image's latents at a clicked patch are the view's, computed here on the same
image without the server."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")
pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402
from test_app_server import free_port  # noqa: E402  (one copy of the helper)

torch.set_num_threads(1)


def saved_sae(folder):
    """A TopK SAE for demo-vit's block 3 (random weights, a saved scale of 0.5), saved as ``folder/topk-b3``;
    returns ``folder`` (what `vitscope app --sae` takes)."""
    from vitscope.analysis.sae import SAE, SAEConfig, save_sae

    g = torch.Generator().manual_seed(0)
    sae = SAE(SAEConfig(d_in=64, width=96, arch="topk", k=(6,), block=(3,), meta={"model": "demo-vit"}))
    with torch.no_grad():
        sae.W_enc[0] = torch.randn(64, 96, generator=g) / 8
        sae.W_dec[0] = torch.randn(96, 64, generator=g)
        sae.scale[0] = 0.5
    save_sae(sae, folder / "topk-b3")
    return folder


@pytest.fixture(scope="module")
def app_with_sae(tmp_path_factory):
    from vitscope.app.ui import build_app, launch

    tmp = tmp_path_factory.mktemp("sae-app")
    saved_sae(tmp / "saes")
    demo, state = build_app(models=["demo-vit"], tmp_dir=tmp / "app", saes=[tmp / "saes"], concurrency=2)
    _, url, _ = launch(demo, state, port=free_port(), block=False, quiet=True)
    rng = np.random.default_rng(1)
    a = rng.integers(0, 255, (80, 96, 3), dtype=np.uint8)        # not square, not the model's size
    a[20:60, 30:70] = [30, 200, 60]
    Image.fromarray(a).save(tmp / "upload.png")
    yield Client(url, verbose=False, download_files=str(tmp / "dl")), state, tmp / "upload.png"
    demo.close()


def test_uploaded_image_lists_the_latents_of_a_clicked_patch(app_with_sae):
    from vitscope.app import sae_view as SV

    client, state, upload = app_with_sae
    (name,) = state.saes
    fig, table, note, files = client.predict("demo-vit", False, handle_file(str(upload)), None, name, None, "3,4",
                                             api_name="/sae")
    model = state.models.get("demo-vit", False).model
    want = SV.listing(SV.sae_view(model, Image.open(upload).convert("RGB"), state.saes[name], patch=(3, 4)))
    got = table["data"] if isinstance(table, dict) else table
    assert len(got) == len(want) > 0
    assert [int(float(r[0])) for r in got] == want.iloc[:, 0].astype(int).tolist()
    np.testing.assert_allclose([float(r[1]) for r in got], want.iloc[:, 1].to_numpy(), rtol=1e-4, atol=1e-5)
    assert fig and "latent" in note.lower()


def test_a_bad_latent_is_a_message(app_with_sae):
    client, state, upload = app_with_sae
    (name,) = state.saes
    with pytest.raises(Exception, match="latent"):
        client.predict("demo-vit", False, handle_file(str(upload)), None, name, 9999, "", api_name="/sae")
