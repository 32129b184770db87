"""`vitscope train` on `synthetic:` draws each image once per run (decoded into memory), not once per step."""
from collections import Counter

import vitscope.data.synthetic.objects as objects
from vitscope.train.loop import train


def test_synthetic_images_drawn_once_per_run(tmp_path, monkeypatch):
    calls = Counter()
    original = objects.SyntheticSource.load

    def counting_load(self, i):
        calls[(self.split, i)] += 1
        return original(self, i)

    monkeypatch.setattr(objects.SyntheticSource, "load", counting_load)
    train(data="synthetic:size=32,n=96", depth=1, embed_dim=16, num_heads=2, img_size=32, patch_size=8, epochs=3,
          batch_size=16, out=str(tmp_path / "run"), progress=False)
    assert len(calls) == 96                       # every image of the split was used
    assert max(calls.values()) == 1               # and drawn once over three epochs
