"""Label propagation speed: vitscope's ``propagate_labels`` against a faithful transcription of DINO's
``eval_video_segmentation.py`` (its neighbourhood mask built by a Python loop, the context stacked and
re-normalised every frame, one batched product per context frame), on one video.

    python benchmarks/label_propagation.py                      # 50 frames, 30 x 53 tokens, width 384, 3 rounds
    python benchmarks/label_propagation.py --frames 20 --rounds 1 --threads 1

Both runs take the same random features (smooth in space and time, like a real video's) and the same first-frame
labels; the script checks that the soft labels agree to float32 rounding and that the per-frame label maps of the
protocol (upsampling, per-channel normalisation, argmax) are identical, then prints min / median / max seconds of
interleaved rounds and the ratio. The DINO side builds its neighbourhood mask once per video, as DINO does.
"""
from __future__ import annotations

import argparse
import queue
import time

import numpy as np
import torch
import torch.nn.functional as F

from vitscope.analysis.video_segmentation import norm_mask, propagate_labels


# ----------------------------------------------------------------------------- DINO, transcribed
def dino_restrict_neighborhood(h, w, size_mask_neighborhood):
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * size_mask_neighborhood + 1):
                for q in range(2 * size_mask_neighborhood + 1):
                    if i - size_mask_neighborhood + p < 0 or i - size_mask_neighborhood + p >= h:
                        continue
                    if j - size_mask_neighborhood + q < 0 or j - size_mask_neighborhood + q >= w:
                        continue
                    mask[i, j, i - size_mask_neighborhood + p, j - size_mask_neighborhood + q] = 1
    return mask.reshape(h * w, h * w)


def dino_label_propagation(feat_tar, h, w, list_frame_feats, list_segs, mask_neighborhood, size_mask, topk):
    return_feat_tar = feat_tar.T
    ncontext = len(list_frame_feats)
    feat_sources = torch.stack(list_frame_feats)
    feat_tar = F.normalize(feat_tar, dim=1, p=2)
    feat_sources = F.normalize(feat_sources, dim=1, p=2)
    feat_tar = feat_tar.unsqueeze(0).repeat(ncontext, 1, 1)
    aff = torch.exp(torch.bmm(feat_tar, feat_sources) / 0.1)
    if size_mask > 0:
        if mask_neighborhood is None:
            mask_neighborhood = dino_restrict_neighborhood(h, w, size_mask)
            mask_neighborhood = mask_neighborhood.unsqueeze(0).repeat(ncontext, 1, 1)
        aff *= mask_neighborhood
    aff = aff.transpose(2, 1).reshape(-1, h * w)
    tk_val, _ = torch.topk(aff, dim=0, k=topk)
    tk_val_min, _ = torch.min(tk_val, dim=0)
    aff[aff < tk_val_min] = 0
    aff = aff / torch.sum(aff, keepdim=True, axis=0)
    segs = torch.cat(list_segs)
    nmb_context, C, h, w = segs.shape
    segs = segs.reshape(nmb_context, C, -1).transpose(2, 1).reshape(-1, C).T
    seg_tar = torch.mm(segs, aff)
    return seg_tar.reshape(1, C, h, w), return_feat_tar, mask_neighborhood


def dino_video(feats, first_seg, n_last=7, size_mask=12, topk=5):
    """feats (T, h*w, D) as DINO's extract_feature returns them; first_seg (1, C, h, w) one-hot.
    Returns the soft labels of frames 1..T-1 (DINO writes frame 0 as the ground truth)."""
    T, n, D = feats.shape
    h, w = first_seg.shape[-2:]
    que = queue.Queue(n_last)
    frame1_feat = feats[0].T
    mask_neighborhood = None
    out = []
    for cnt in range(1, T):
        used_frame_feats = [frame1_feat] + [pair[0] for pair in list(que.queue)]
        used_segs = [first_seg] + [pair[1] for pair in list(que.queue)]
        avg, feat_tar, mask_neighborhood = dino_label_propagation(feats[cnt], h, w, used_frame_feats, used_segs,
                                                                  mask_neighborhood, size_mask, topk)
        if que.qsize() == n_last:
            que.get()
        que.put([feat_tar, avg.clone()])
        out.append(avg[0])
    return out


# ----------------------------------------------------------------------------- inputs
def smooth_video(T, h, w, D, seed=0):
    """Random features smooth in space and drifting in time (so the labels move like a real video's)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(1, D, h // 3 + 2, w // 3 + 2, generator=g)
    frames = []
    for t in range(T):
        dy, dx = 0.3 * float(np.sin(t / 7)), 0.3 * float(np.cos(t / 9))
        theta = torch.tensor([[[1.0, 0, dx], [0, 1.0, dy]]])
        grid = F.affine_grid(theta, (1, D, h, w), align_corners=False)
        x = F.grid_sample(base, grid, align_corners=False)[0]                          # D, h, w
        frames.append((x + 0.3 * torch.randn(D, h, w, generator=g)).permute(1, 2, 0))
    feats = torch.stack(frames)                                                        # T, h, w, D
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    labels = ((yy - h / 2) ** 2 / (h / 4) ** 2 + (xx - w / 3) ** 2 / (w / 5) ** 2 < 1).long()
    labels[(xx > 0.7 * w) & (yy > h / 3)] = 2
    return feats, labels


def to_ids(soft, patch=16):
    up = F.interpolate(soft[None], scale_factor=patch, mode="bilinear", align_corners=False)[0]
    return torch.argmax(norm_mask(up), 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--h", type=int, default=30)
    ap.add_argument("--w", type=int, default=53)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    feats, labels = smooth_video(args.frames, args.h, args.w, args.dim)
    T, h, w, D = feats.shape
    first = F.one_hot(labels, int(labels.max()) + 1).permute(2, 0, 1)[None].float()
    dino_feats = feats.reshape(T, h * w, D)
    print(f"one video: {T} frames, {h} x {w} tokens, width {D}; torch threads {torch.get_num_threads()}")

    times = {"vitscope": [], "dino": []}
    cpu = {"vitscope": [], "dino": []}
    for r in range(args.rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        ours = propagate_labels(feats, labels)
        times["vitscope"].append(time.perf_counter() - t0)
        cpu["vitscope"].append(time.process_time() - c0)
        t0, c0 = time.perf_counter(), time.process_time()
        ref = dino_video(dino_feats, first)
        times["dino"].append(time.perf_counter() - t0)
        cpu["dino"].append(time.process_time() - c0)
        print(f"round {r + 1}: vitscope {times['vitscope'][-1]:.2f} s (CPU {cpu['vitscope'][-1]:.2f} s), "
              f"DINO {times['dino'][-1]:.2f} s (CPU {cpu['dino'][-1]:.2f} s)")

    err = max(float((ours[t + 1] - ref[t]).abs().max()) for t in range(T - 1))
    same = all(torch.equal(to_ids(ours[t + 1]), to_ids(ref[t])) for t in range(T - 1))
    print(f"largest soft-label difference {err:.2e}; label maps identical on all {T - 1} frames: {same}")
    for what, tab in (("wall-clock", times), ("process CPU", cpu)):
        v, d = np.array(tab["vitscope"]), np.array(tab["dino"])
        print(f"{what + ' s':14s} {'min':>8s} {'median':>8s} {'max':>8s}")
        for name, a in (("vitscope", v), ("DINO", d)):
            print(f"{name:14s} {a.min():8.2f} {np.median(a):8.2f} {a.max():8.2f}")
        print(f"ratio DINO / vitscope ({what}, median): {np.median(d) / np.median(v):.1f}x")
    if not same:
        raise SystemExit("label maps differ")


if __name__ == "__main__":
    main()
