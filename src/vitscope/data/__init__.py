"""Data: image collections behind one dataset interface, task formats, the synthetic benchmark, robust decoding.

>>> from vitscope.data import open_dataset
>>> ds = open_dataset("synthetic:n=64,size=32")          # or a folder, a list, shards, hf:NAME, a video
>>> for images, labels, idx in ds.batches(batch_size=16):
...     pass
>>> print(ds.skip_summary())
"""
from vitscope.data.datasets import Batch, ImageDataset, collate_skip
from vitscope.data.decode import ImageDecodeError, decode_image, load_image
from vitscope.data.skip import SkipRecord, read_skip_report, skip_summary, write_skip_report
from vitscope.data.spec import open_dataset, open_source, parse_spec

__all__ = ["Batch", "ImageDataset", "ImageDecodeError", "SkipRecord", "collate_skip", "decode_image",
           "load_image", "open_dataset", "open_source", "parse_spec", "read_skip_report", "skip_summary",
           "write_skip_report"]
