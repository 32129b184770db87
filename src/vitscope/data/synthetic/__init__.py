"""The synthetic benchmark: shapes with ground truth, deterministic from a seed, generated in seconds.

- :func:`object_sample` / ``open_dataset("synthetic:...")``: one shape per image, with class, mask, parts, keypoints
- :func:`scene_sample`: several objects per image (instance, semantic and part masks, keypoints with visibility)
- :func:`retrieval_set`: a Revisited-style database and queries with easy / hard / junk positives
- :func:`video_sample`: short clips of moving, deforming objects with per-frame masks
- :func:`pair_sample`: two views of a figure of four shapes, keypoints at the parts' centres (SPair-style pairs)
- :func:`write`: all of it on disk in the public formats (ImageFolder, COCO, PartImageNet, ImageNet-S, DAVIS,
  SPair-71k, Revisited), so the real loaders read it back; ``vitscope synth OUT_DIR`` on the command line
"""
from vitscope.data.synthetic.config import DIFFICULTY, SynthConfig
from vitscope.data.synthetic.objects import ShapeSample, SyntheticSource, object_sample
from vitscope.data.synthetic.pairs import PairSample, pair_sample
from vitscope.data.synthetic.retrieval import RetrievalSet, retrieval_set
from vitscope.data.synthetic.scenes import SceneSample, scene_sample
from vitscope.data.synthetic.shapes import KEYPOINTS, PART_NAMES, SHAPES
from vitscope.data.synthetic.video import VideoSample, video_sample
from vitscope.data.synthetic.write import FORMATS, write

__all__ = ["DIFFICULTY", "FORMATS", "KEYPOINTS", "PART_NAMES", "SHAPES", "PairSample", "RetrievalSet", "SceneSample",
           "ShapeSample", "SynthConfig", "SyntheticSource", "VideoSample", "object_sample", "pair_sample",
           "retrieval_set", "scene_sample", "video_sample", "write"]
