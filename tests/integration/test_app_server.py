"""The web app end to end: a server started here on 127.0.0.1, real HTTP through ``gradio_client``.

Every endpoint answers with the numbers the view functions give; files outside the app's folder are refused;
100 requests from 20 concurrent clients all succeed; 20 bad uploads each get a message (or, for the 16-bit PNG
and the CMYK JPEG, a correct result) and the next good request is answered normally.
"""
from __future__ import annotations

import io
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from gradio_client import Client, handle_file  # noqa: E402

from vitscope.app import views as V  # noqa: E402

torch.set_num_threads(1)
ATT = ("demo-vit", False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from vitscope.app.ui import build_app, launch

    demo, state = build_app(tmp_dir=tmp_path_factory.mktemp("app"), concurrency=4)
    _, url, _ = launch(demo, state, port=free_port(), block=False, quiet=True)
    assert url.startswith("http://127.0.0.1:")
    yield url, state
    demo.close()


@pytest.fixture(scope="module")
def client(server, tmp_path_factory):
    return Client(server[0], verbose=False, download_files=str(tmp_path_factory.mktemp("dl")))


def attention(client, upload=None, sample="cat", block=5, head="mean", query="cls", patch="", model=ATT):
    return client.predict(*model, upload, sample, block, head, query, patch, 0.6, "inferno", api_name="/attention")


def test_every_endpoint_answers_with_the_views_numbers(server, client):
    url, state = server
    model = state.models.get("demo-vit").model
    img = state.image(None, "coffee")
    fig, heads, note, files = attention(client, sample="coffee", block=3, head="head 2", query="patch", patch="4,5")
    assert "patch (4, 5)" in note and "head 2" in note
    maps = np.load(next(f for f in files if f.endswith(".maps.npy")))
    np.testing.assert_allclose(maps, V.attention_view(model, img, block=3, query=(4, 5)).arrays["maps"], atol=1e-6)
    assert Image.open(fig).size == (448, 448) and Image.open(heads).size[0] > 448

    label, note, files = client.predict(*ATT, None, "coffee", api_name="/predict")
    ref = V.predictions_view(model, img)
    assert [c["label"] for c in label["confidences"]] == list(ref.label)
    fig, note, files = client.predict(*ATT, None, "coffee", "chefer2021-generic", "3: cross", "mean", 0.0, 0.6, "inferno",
                                      api_name="/rollout")
    assert "3: cross" in note
    np.testing.assert_allclose(np.load(next(f for f in files if f.endswith(".map.npy"))),
                               V.rollout_view(model, img, "chefer", target=3).arrays["map"], atol=1e-5)
    fig, note, files = client.predict("demo-vit-reg4", False, None, "coffee", 4, "inferno", api_name="/tokens")
    assert "CLS token enters the sequence before block 6" in note and fig is not None
    fig, note, files = client.predict("demo-vit-reg4", False, None, "coffee", 1, "inferno", api_name="/tokens")
    assert fig is None and "block 3" in note
    fig, note, files = client.predict(*ATT, None, "coffee", "B", api_name="/distance")
    np.testing.assert_allclose(np.load(next(f for f in files if f.endswith(".distance.npy"))),
                               V.distance_view(model, img, "B").arrays["distance"], atol=1e-5)
    assert any(f.endswith(".csv") for f in files)
    fig, note, files = client.predict(*ATT, None, "coffee", 2, 0.5, api_name="/logit_lens")
    np.testing.assert_array_equal(np.load(next(f for f in files if f.endswith(".top_class.npy"))),
                                  V.logit_lens_view(model, img, block=2).arrays["top_class"])
    # a random-weights model, added by name, no download
    fig, heads, note, files = attention(client, model=("demo-vit", True))
    assert fig is not None


def test_explain_endpoint_answers_with_the_views_numbers(server, client):
    url, state = server
    model = state.models.get("demo-vit").model
    img = state.image(None, "coffee")
    fig, note, files = client.predict(*ATT, None, "coffee", "gradcam", "3: cross", 2, 0.55, "inferno",
                                      api_name="/explain")
    assert "3: cross" in note and "block 2" in note and fig is not None
    np.testing.assert_allclose(np.load(next(f for f in files if f.endswith(".map.npy"))),
                               V.explain_view(model, img, "gradcam", target=3, block=2).arrays["map"], atol=1e-5)
    with pytest.raises(Exception, match="method must be one of"):
        client.predict(*ATT, None, "coffee", "gradcan", "predicted class", -1, 0.55, "inferno", api_name="/explain")


def test_an_unknown_model_is_a_message(client):
    with pytest.raises(Exception, match="could not load model 'no-such-model'"):
        attention(client, model=("no-such-model", False))


def test_only_the_apps_folder_is_served(server, client):
    url, state = server
    _, _, _, files = attention(client)
    outside = [Path(__file__).resolve(), Path("/etc/hostname"), state.root.parent]
    for p in outside:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}gradio_api/file={p}")
        assert e.value.code == 403
    # the sample copied into the app's folder is served; a traversal out of it is not
    with urllib.request.urlopen(f"{url}gradio_api/file={state.samples['cat']}") as r:
        assert r.status == 200
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"{url}gradio_api/file={state.root}/../{Path(__file__).name}")
    # an "upload" pointing outside the folder is refused by the app itself
    with pytest.raises(Exception):
        attention(client, upload=handle_file(str(Path(__file__).resolve())))


def test_100_requests_from_20_concurrent_clients(server):
    url, _ = server
    blocks = [0, 1, 2, 3, 4, 5]

    def one_client(k: int) -> list[str]:
        c = Client(url, verbose=False, download_files=False)
        out = []
        for j in range(5):
            fig, heads, note, files = c.predict(*ATT, None, ["cat", "coffee"][k % 2], blocks[(k + j) % 6], "mean",
                                                "cls", "", 0.6, "inferno", api_name="/attention")
            out.append(note)
        return out

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one_client, range(20)))
    notes = [n for r in results for n in r]
    assert len(notes) == 100 and all(n.startswith("CLS -> patches at block") for n in notes)


def _bad_files(folder: Path) -> list[tuple[Path, bool]]:
    """20 bad uploads: (file, whether a correct result is expected rather than a message)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 40000, 40000, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))
    out = []
    for k in range(4):
        (folder / f"text{k}.png").write_text(f"not an image {k}\n" * 50)
        (folder / f"zero{k}.png").write_bytes(b"")
        (folder / f"bomb{k}.png").write_bytes(bomb)
        g = (np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * (k + 5))
        Image.fromarray(g).save(folder / f"deep{k}.png")
        Image.new("CMYK", (50, 40), (k * 40, 200, 30, 10)).save(folder / f"cmyk{k}.jpg")
        out += [(folder / f"text{k}.png", False), (folder / f"zero{k}.png", False), (folder / f"bomb{k}.png", False),
                (folder / f"deep{k}.png", True), (folder / f"cmyk{k}.jpg", True)]
    return out


def test_bad_uploads_get_a_message_and_the_server_keeps_answering(server, client, tmp_path):
    url, state = server
    model = state.models.get("demo-vit").model
    bad = _bad_files(tmp_path)
    assert len(bad) == 20
    messages = []
    for path, ok in bad:
        try:
            fig, heads, note, files = attention(client, upload=handle_file(str(path)))
        except Exception as e:  # noqa: BLE001 - gradio_client raises AppError with the page's message
            assert not ok, (path.name, e)
            messages.append(str(e))
            continue
        assert ok, path.name
        if not path.stem.endswith("0"):
            continue
        # a correct result: the numbers of the view on the image decoded by the library
        from vitscope.data.decode import load_image

        ref = V.attention_view(model, load_image(path), block=5).arrays["maps"]
        np.testing.assert_allclose(np.load(next(f for f in files if f.endswith(".maps.npy"))), ref, atol=1e-5)
    assert len(messages) == 12
    for m in messages:
        assert any(k in m for k in ("not an image", "empty", "megapixels", "too many pixels")), m
    fig, heads, note, files = attention(client)
    assert note.startswith("CLS -> patches at block 5")
    # an upload larger than the byte limit is stopped at the door
    big = tmp_path / "big.png"
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1400, 1400, 3), dtype=np.uint8)).save(buf, "PNG")
    big.write_bytes(buf.getvalue())
    assert big.stat().st_size > 2**20
    state.max_bytes, saved = 2**20, state.max_bytes
    try:
        with pytest.raises(Exception, match="MiB"):
            attention(client, upload=handle_file(str(big)))
    finally:
        state.max_bytes = saved
    assert attention(client)[2].startswith("CLS -> patches")
