"""Latency of the web app's attention view over real HTTP (gradio_client against a local server).

Two models: the bundled demo model (64 px, 6 blocks) and a ViT-S/16 with random weights at 224 px (no
download). For each: one client sending requests one after the other, then 20 concurrent clients. Rounds
alternate between the models so that machine load falls on both alike. Reported per model and setting:
min / median / p95 / max seconds per request (client side, upload-free: the sample photograph) and the ratio
to the demo model. Also the view function alone (no server) for reference.

    python benchmarks/app.py                       # 3 rounds x (10 sequential + 20 x 3 concurrent) requests
    python benchmarks/app.py --rounds 1 --seq 20 --per-client 5
"""
from __future__ import annotations

import argparse
import socket
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

MODELS = {"demo-vit": ("demo-vit", False, 5), "ViT-S/16 random 224": ("vit-s16", True, 11)}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(client, model, random, block):
    t = time.perf_counter()
    client.predict(model, random, None, "cat", block, "mean", "cls", "", 0.6, "inferno", api_name="/attention")
    return time.perf_counter() - t


def _stats(xs):
    xs = np.asarray(xs)
    return xs.min(), float(np.median(xs)), float(np.percentile(xs, 95)), xs.max()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seq", type=int, default=10, help="sequential requests per model and round (1 client)")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--per-client", type=int, default=3, help="requests per concurrent client and round")
    ap.add_argument("--concurrency", type=int, default=4, help="the server's queue concurrency limit")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from gradio_client import Client

    from vitscope.app import views as V
    from vitscope.app.ui import build_app, launch

    demo, state = build_app(["demo-vit"], concurrency=args.concurrency)
    _, url, _ = launch(demo, state, port=_port(), block=False, quiet=True)
    for name, random, _ in MODELS.values():
        state.models.get(name, random)
    one = Client(url, verbose=False, download_files=False)
    many = [Client(url, verbose=False, download_files=False) for _ in range(args.clients)]
    for name, random, block in MODELS.values():              # warm-up
        for _ in range(2):
            _request(one, name, random, block)
    lat = {(k, s): [] for k in MODELS for s in ("direct", "1 client", f"{args.clients} clients")}
    img = state.image(None, "cat")
    for r in range(args.rounds):
        for label, (name, random, block) in MODELS.items():
            entry = state.models.get(name, random)
            for _ in range(args.seq):
                t = time.perf_counter()
                with entry.lock:
                    V.attention_view(entry.model, img, block=block)
                lat[(label, "direct")].append(time.perf_counter() - t)
            lat[(label, "1 client")] += [_request(one, name, random, block) for _ in range(args.seq)]
            with ThreadPoolExecutor(args.clients) as pool:
                per = pool.map(lambda c: [_request(c, name, random, block) for _ in range(args.per_client)], many)
                lat[(label, f"{args.clients} clients")] += [x for xs in per for x in xs]
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    demo.close()

    print(f"\nattention view, seconds per request (torch threads {torch.get_num_threads()}, "
          f"server concurrency {args.concurrency})")
    print(f"{'model':<22}{'setting':<13}{'n':>5}{'min':>8}{'median':>8}{'p95':>8}{'max':>8}{'median / demo':>15}")
    for setting in ("direct", "1 client", f"{args.clients} clients"):
        base = statistics.median(lat[("demo-vit", setting)])
        for label in MODELS:
            xs = lat[(label, setting)]
            mn, med, p95, mx = _stats(xs)
            print(f"{label:<22}{setting:<13}{len(xs):>5}{mn:>8.3f}{med:>8.3f}{p95:>8.3f}{mx:>8.3f}{med / base:>15.2f}")


if __name__ == "__main__":
    main()
