"""Write the synthetic benchmark to disk in the public formats, so the real loaders read it back.

Layout under ``out_dir`` (each part optional, see ``FORMATS``)::

    synth.json                                   settings, counts, and how to open each part
    classification/{train,val}/<class>/NNNNN.png  ImageFolder          -> open_dataset(...)
    coco/images/NNNNNNNNNNNN.png, coco/annotations/instances_synth.json   -> tasks.load_coco
    partimagenet/images/test/*.png, partimagenet/annotations/test.json    -> tasks.load_partimagenet
    imagenet-s/{validation,validation-segmentation}/<class>/*.png         -> tasks.load_imagenet_s
    davis/{JPEGImages,Annotations}/480p/<seq>/NNNNN.*, ImageSets/2017/val.txt -> tasks.load_davis
    spair/{JPEGImages,ImageAnnotation}/<figure>/*, PairAnnotation/test/*.json, Layout/large/test.txt -> tasks.load_spair
    revisited/rsynth/jpg/*.jpg, revisited/rsynth/gnd_rsynth.pkl           -> tasks.load_revisited

Same settings and seed, same bytes (PNG and JPEG encoders are deterministic; json and pickle are written
in a fixed order).
"""
from __future__ import annotations

import json
import pickle
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vitscope.data.synthetic.config import SynthConfig
from vitscope.data.synthetic.objects import object_sample
from vitscope.data.synthetic.pairs import pair_sample
from vitscope.data.synthetic.retrieval import retrieval_set
from vitscope.data.synthetic.scenes import scene_sample
from vitscope.data.synthetic.shapes import KEYPOINTS, PART_NAMES, SHAPES
from vitscope.data.synthetic.video import video_sample

FORMATS = ("imagefolder", "coco", "partimagenet", "imagenet_s", "davis", "spair", "revisited")
JPEG_QUALITY = 95


def rle_counts(mask: np.ndarray) -> list[int]:
    """Uncompressed COCO RLE of a mask: run lengths over the column-major (Fortran order) pixels, starting with 0s."""
    flat = np.asarray(mask, dtype=bool).reshape(-1, order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(edges).tolist()
    return ([0] + runs) if flat.size and flat[0] else runs


def _coco_rle(mask: np.ndarray) -> dict:
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": rle_counts(mask)}


def _xywh(box) -> list[float]:
    x0, y0, x1, y1 = (float(v) for v in box)
    return [x0, y0, x1 - x0, y1 - y0]


def _png(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="PNG")


def _jpg(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format="JPEG", quality=JPEG_QUALITY)


def _json(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, separators=(",", ":")))


def write_imagefolder(cfg: SynthConfig, out: Path, train_per_class: int, val_per_class: int) -> dict:
    counts = {}
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        n = per * cfg.n_classes
        for i in range(n):
            s = object_sample(cfg, split, i)
            _png(s.image, out / split / s.shape / f"{i:05d}.png")
        counts[split] = n
    return counts


def write_coco(cfg: SynthConfig, out: Path, n_scenes: int) -> dict:
    cats = [{"id": k + 1, "name": name, "supercategory": "shape",
             "keypoints": [f"kp{j}" for j in range(len(KEYPOINTS[name]))], "skeleton": []}
            for k, name in enumerate(cfg.classes)]
    images, anns = [], []
    for i in range(n_scenes):
        s = scene_sample(cfg, i)
        h, w = s.image.shape[:2]
        img_id = i + 1
        fname = f"{img_id:012d}.png"
        _png(s.image, out / "images" / fname)
        images.append({"id": img_id, "file_name": fname, "height": h, "width": w})
        for k in range(len(s.labels)):
            kp = s.keypoints[k]
            flat = [float(v) for x, y, vis in kp for v in ((x, y, 2.0) if vis else (0.0, 0.0, 0.0))]
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": int(s.labels[k]) + 1,
                         "segmentation": _coco_rle(s.masks[k]), "area": float(s.masks[k].sum()),
                         "bbox": _xywh(s.boxes[k]), "iscrowd": 0,
                         "keypoints": flat, "num_keypoints": int(kp[:, 2].sum())})
    _json({"info": {"description": "vitscope synthetic scenes", "version": "1.0"}, "licenses": [],
           "images": images, "annotations": anns, "categories": cats}, out / "annotations" / "instances_synth.json")
    return {"images": n_scenes, "instances": len(anns)}


def write_partimagenet(cfg: SynthConfig, out: Path, n_images: int) -> dict:
    cats = [{"id": c * len(PART_NAMES) + p, "name": f"{shape.capitalize()} {part.capitalize()}",
             "supercategory": shape.capitalize()}
            for c, shape in enumerate(cfg.classes) for p, part in enumerate(PART_NAMES)]
    images, anns = [], []
    for i in range(n_images):
        s = object_sample(cfg, "test", i)
        fname = f"{s.shape}_{i:05d}.png"
        _png(s.image, out / "images" / "test" / fname)
        h, w = s.image.shape[:2]
        images.append({"id": i + 1, "file_name": fname, "height": h, "width": w})
        for p in range(len(PART_NAMES)):
            m = s.parts == p
            if not m.any():
                continue
            ys, xs = np.nonzero(m)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": s.label * len(PART_NAMES) + p,
                         "segmentation": _coco_rle(m), "area": float(m.sum()), "iscrowd": 0,
                         "bbox": _xywh((xs.min(), ys.min(), xs.max() + 1, ys.max() + 1))})
    _json({"images": images, "annotations": anns, "categories": cats}, out / "annotations" / "test.json")
    return {"images": n_images, "parts": len(anns)}


def write_imagenet_s(cfg: SynthConfig, out: Path, n_images: int) -> dict:
    from vitscope.data.tasks.imagenet_s import encode_mask

    for i in range(n_images):
        s = object_sample(cfg, "val", 100_000 + i)
        ids = np.where(s.mask, s.label + 1, 0)
        _png(s.image, out / "validation" / s.shape / f"synth_{i:05d}.png")
        seg = out / "validation-segmentation" / s.shape / f"synth_{i:05d}.png"
        seg.parent.mkdir(parents=True, exist_ok=True)
        encode_mask(ids).save(seg, format="PNG")
    (out / f"ImageNetS_categories_im{cfg.n_classes}.txt").write_text("\n".join(cfg.classes) + "\n")
    return {"images": n_images}


def write_davis(cfg: SynthConfig, out: Path, n_videos: int, n_frames: int) -> dict:
    from vitscope.data.tasks.davis import write_palette_mask

    names = []
    for v in range(n_videos):
        clip = video_sample(cfg, v, n_frames=n_frames)
        name = f"synth-{v:03d}"
        names.append(name)
        (out / "Annotations" / "480p" / name).mkdir(parents=True, exist_ok=True)
        for t in range(n_frames):
            _jpg(clip.frames[t], out / "JPEGImages" / "480p" / name / f"{t:05d}.jpg")
            write_palette_mask(clip.masks[t], out / "Annotations" / "480p" / name / f"{t:05d}.png")
    (out / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "2017" / "val.txt").write_text("\n".join(names) + "\n")
    return {"sequences": n_videos, "frames": n_videos * n_frames}


def write_spair(cfg: SynthConfig, out: Path, n_pairs: int) -> dict:
    """Pairs of views of a figure (``pairs.pair_sample``); keypoint ``j`` is the centre of part ``j``."""
    lines, figures = [], {}
    for k in range(n_pairs):
        ps = pair_sample(cfg, k)
        figures[ps.name] = [SHAPES[c] for c in ps.parts]
        views = []
        for j, v in enumerate((ps.src, ps.trg)):
            name = f"synth_{k:05d}_{j}"
            _jpg(v.image, out / "JPEGImages" / ps.name / f"{name}.jpg")
            x0, y0, x1, y1 = v.box
            box = [x0, y0, x1 - 1, y1 - 1]  # inclusive corners, as in PASCAL-based SPair
            h, w = v.image.shape[:2]
            _json({"filename": f"{name}.jpg", "image_width": w, "image_height": h, "image_depth": 3,
                   "category": ps.name, "pose": "Unspecified", "truncated": 0, "occluded": 0, "difficult": 0,
                   "bndbox": box, "kps": {str(q): [float(x), float(y)] for q, (x, y) in enumerate(v.keypoints)}},
                  out / "ImageAnnotation" / ps.name / f"{name}.json")
            views.append((name, v, box, (w, h)))
        (sn, sv, sb, ssize), (tn, tv, tb, tsize) = views
        pair = f"{k:06d}-{sn}-{tn}:{ps.name}"
        lines.append(pair)
        _json({"filename": pair, "src_imname": f"{sn}.jpg", "trg_imname": f"{tn}.jpg",
               "src_imsize": [*ssize, 3], "trg_imsize": [*tsize, 3], "src_bndbox": sb, "trg_bndbox": tb,
               "category": ps.name, "src_pose": "Unspecified", "trg_pose": "Unspecified",
               "src_kps": sv.keypoints.tolist(), "trg_kps": tv.keypoints.tolist(),
               "kps_ids": [str(q) for q in range(len(sv.keypoints))], "mirror": 0, "viewpoint_variation": 0,
               "scale_variation": 0, "truncation": 0, "occlusion": 0}, out / "PairAnnotation" / "test" / f"{pair}.json")
    (out / "Layout" / "large").mkdir(parents=True, exist_ok=True)
    (out / "Layout" / "large" / "test.txt").write_text("\n".join(lines) + "\n")
    return {"pairs": n_pairs, "keypoints": "centre of each part", "parts_of_category": figures}


def write_revisited(cfg: SynthConfig, out: Path, n_landmarks: int, name: str = "rsynth") -> dict:
    rs = retrieval_set(cfg, n_landmarks=n_landmarks)
    root = out / name
    for img, n in zip(rs.db_images, rs.db_names):
        _jpg(img, root / "jpg" / f"{n}.jpg")
    for img, n in zip(rs.query_images, rs.query_names):
        _jpg(img, root / "jpg" / f"{n}.jpg")
    gnd = [{"bbx": [float(v) for v in g["bbx"]], "easy": g["easy"], "hard": g["hard"], "junk": g["junk"]}
           for g in rs.gnd]
    with open(root / f"gnd_{name}.pkl", "wb") as f:
        pickle.dump({"imlist": rs.db_names, "qimlist": rs.query_names, "gnd": gnd}, f, protocol=4)
    return {"database": len(rs.db_names), "queries": len(rs.query_names)}


def write(out_dir: str | Path, cfg: SynthConfig | None = None, *, formats: Iterable[str] = FORMATS,
          train_per_class: int = 50, val_per_class: int = 20, scenes: int = 40, part_images: int = 40,
          semantic_images: int = 40, videos: int = 4, frames: int = 12, pairs: int = 40, landmarks: int = 6,
          progress: bool = False) -> dict:
    """Write the chosen ``formats`` under ``out_dir``; returns (and saves as ``synth.json``) what was written."""
    cfg = cfg or SynthConfig()
    formats = list(formats)
    bad = sorted(set(formats) - set(FORMATS))
    if bad:
        raise ValueError(f"unknown format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs = {
        "imagefolder": ("classification", lambda p: write_imagefolder(cfg, p, train_per_class, val_per_class),
                        "open_dataset('{p}/train')"),
        "coco": ("coco", lambda p: write_coco(cfg, p, scenes),
                 "tasks.load_coco('{p}/annotations/instances_synth.json', '{p}/images')"),
        "partimagenet": ("partimagenet", lambda p: write_partimagenet(cfg, p, part_images),
                         "tasks.load_partimagenet('{p}/annotations/test.json', '{p}/images/test')"),
        "imagenet_s": ("imagenet-s", lambda p: write_imagenet_s(cfg, p, semantic_images),
                       "tasks.load_imagenet_s('{p}')"),
        "davis": ("davis", lambda p: write_davis(cfg, p, videos, frames), "tasks.load_davis('{p}')"),
        "spair": ("spair", lambda p: write_spair(cfg, p, pairs), "tasks.load_spair('{p}')"),
        "revisited": ("revisited", lambda p: write_revisited(cfg, p, landmarks),
                      "tasks.load_revisited('{p}/rsynth')"),
    }
    manifest: dict[str, Any] = {"generator": "vitscope.data.synthetic", "config": cfg.to_dict(),
                                "classes": cfg.classes, "parts": list(PART_NAMES), "written": {}}
    it = formats
    if progress:
        from tqdm import tqdm

        it = tqdm(formats, desc="synth", unit="format")
    for f in it:
        folder, fn, how = jobs[f]
        counts = fn(out / folder)
        manifest["written"][f] = {"folder": folder, "counts": counts, "open_with": how.format(p=folder)}
    (out / "synth.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
