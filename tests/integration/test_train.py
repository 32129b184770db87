"""`vitscope.train.train` end to end on tiny data: learning, best-by-validation, reproducibility, resume,
dynamic CLS / register placement, distillation through a teacher, data parallelism under torchrun."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from vitscope.train import train
from vitscope.models.loading import load_model, save_model
from vitscope.train.data import split_indices

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, batch_size=32, progress=False,
            formats=("png",))

DATASET_SRC = '''
import torch

class Bars:
    """Class k < 3: a bright bar (random place) in colour channel k; class 3: in every channel. Noise around."""
    classes = ["red", "green", "blue", "white"]

    def __init__(self, n=256, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (n,), generator=g).tolist()
        self.x = torch.rand(n, 3, 32, 32, generator=g) * 0.4
        rows = torch.randint(0, 20, (n,), generator=g).tolist()
        for i, k in enumerate(self.labels):
            ch = slice(k, k + 1) if k < 3 else slice(0, 3)
            self.x[i, ch, rows[i]:rows[i] + 12, :] += 0.55
        self.x = (self.x * 255).round() / 255

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.x[i], self.labels[i], i
'''
_ns: dict = {}
exec(DATASET_SRC, _ns)
Bars = _ns["Bars"]


def _accuracy(model, ds, idx):
    """Accuracy of the averaged heads (model(x)), computed here from the raw pixels."""
    x = (ds.x[idx] - 0.5) / 0.5
    with torch.no_grad():
        pred = model.eval()(x).argmax(-1)
    return float((pred == torch.tensor(ds.labels)[idx]).float().mean())


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and do not fight other processes for the cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bars():
    return Bars()


@pytest.fixture(scope="module")
def plain_run(bars, tmp_path_factory):
    out = tmp_path_factory.mktemp("plain")
    return train(data=bars, out=str(out), epochs=4, lr=2e-3, drop_path=0.0, **TINY), out


@pytest.mark.slow
def test_train_learns_and_keeps_the_best_by_validation(bars, plain_run):
    summary, out = plain_run
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and [r["epoch"] for r in rows[1:]] == [0, 1, 2, 3]
    val_accs = [r["val_acc"] for r in rows[1:]]
    assert summary["best_val_acc"] == max(val_accs) and summary["best_epoch"] == int(np.argmax(val_accs))
    assert summary["best_val_acc"] >= 0.9                                     # chance is 0.25
    # the saved best model, loaded back, gives the logged validation accuracy on the held-out split
    _, val_idx = split_indices(bars.labels, 0.1, seed=0)
    best = load_model(str(out / "best"))
    assert _accuracy(best, bars, val_idx) == pytest.approx(summary["best_val_acc"])
    assert best.cfg.meta["classes"] == Bars.classes
    extra = best.meta["extra"]                          # the finished run's story travels with the best model
    assert extra["best_val_acc"] == summary["best_val_acc"] and len(extra["history"]) == 4
    assert extra["train_config"]["epochs"] == 4 and extra["seed"] == 0
    for f in ("curves.png", "summary.json", "last/train_state.pt", "best/model.safetensors", "best/config.json"):
        assert (out / f).exists(), f


@pytest.mark.slow
def test_resume_continues_exactly_and_runs_are_reproducible(bars, plain_run, tmp_path):
    _, straight = plain_run
    opts = dict(data=bars, out=str(tmp_path), epochs=4, lr=2e-3, drop_path=0.0, **TINY)
    train(stop_after=2, **opts)                                                # "interrupted" after 2 epochs
    assert len((tmp_path / "log.jsonl").read_text().splitlines()) == 3
    train(resume=True, **opts)
    a = load_model(str(straight / "last")).state_dict()
    b = load_model(str(tmp_path / "last")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)                            # bit-identical to the straight run
    log_a = [json.loads(r) for r in (straight / "log.jsonl").read_text().splitlines()[1:]]
    log_b = [json.loads(r) for r in (tmp_path / "log.jsonl").read_text().splitlines()[1:]]
    assert [r["val_acc"] for r in log_a] == [r["val_acc"] for r in log_b]
    with pytest.raises(ValueError, match="options differ"):
        train(resume=True, **{**opts, "embed_dim": 64})
    with pytest.raises(FileNotFoundError, match="cannot resume"):
        train(resume=True, **{**opts, "out": str(tmp_path / "nothing")})


@pytest.mark.slow
def test_dynamic_token_flags(bars, tmp_path):
    opts = {**TINY, "depth": 3}
    summary = train(data=bars, out=str(tmp_path), epochs=3, lr=2e-3, num_registers=2, register_block=1,
                    cls_block=2, drop_path=0.1, **opts)
    model = load_model(str(tmp_path / "best"))
    cfg = model.cfg
    assert (cfg.num_registers, cfg.register_block, cfg.cls_block, cfg.register_location) == (2, 1, 2, "end")
    assert cfg.drop_path_rate == 0.1
    # the tokens enter where asked: 16 patches, then registers appended, then CLS prepended
    seen = {}
    hooks = [(f"blocks.{i}.hook_resid_pre", lambda t, hook: seen.__setitem__(hook.name, t.shape[1]))
             for i in range(3)]
    model.run_with_hooks(torch.zeros(1, 3, 32, 32), fwd_hooks=hooks)
    assert [seen[f"blocks.{i}.hook_resid_pre"] for i in range(3)] == [16, 18, 19]
    assert model.token_layout(2).registers == (17, 18) and model.token_layout(2).cls == 0
    # the late tokens were trained (they moved away from their random init)
    from vitscope.models import HookedViT

    torch.manual_seed(0)                                  # train() seeds the initialisation with --seed
    fresh = HookedViT(cfg)
    assert torch.equal(fresh.patch_embed.proj.bias, torch.zeros_like(fresh.patch_embed.proj.bias))
    for name in ("reg_token", "cls_token"):
        moved = float((getattr(model, name) - getattr(fresh, name)).detach().abs().max())
        assert moved > 1e-3, name
    assert summary["best_val_acc"] >= 0.6


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_distillation_follows_the_teacher(bars, plain_run, tmp_path, kind):
    # a teacher that is confidently wrong in a known way: the trained model with its classes rotated by one
    _, plain = plain_run
    teacher = load_model(str(plain / "best"))
    with torch.no_grad():
        perm = torch.tensor([3, 0, 1, 2])              # teacher class c = true class c - 1 (mod 4)
        teacher.head.weight.copy_(teacher.head.weight[perm] * 4)
        teacher.head.bias.copy_(teacher.head.bias[perm] * 4)
    save_model(teacher, tmp_path / "teacher")
    summary = train(data=bars, out=str(tmp_path / "student"), epochs=4, lr=2e-3, drop_path=0.0,
                    distill_token=True, teacher=str(tmp_path / "teacher"), distill=kind, distill_alpha=0.5,
                    distill_tau=2.0, **TINY)
    last = summary["history"][-1]
    # the CLS head learns the labels, the DIST head learns the teacher's rotated classes
    assert last["val_acc_cls"] >= 0.8 and last["val_acc_dist"] <= 0.3
    assert last["train_loss_cls"] > 0 and last["train_loss_dist"] > 0
    student = load_model(str(tmp_path / "student" / "best"))
    assert student.cfg.head == "distilled"
    _, val_idx = split_indices(bars.labels, 0.1, seed=0)
    x = (bars.x[val_idx] - 0.5) / 0.5
    with torch.no_grad():
        tokens = student.forward_features(x)
        dist_pred = student.head_dist(tokens[:, 1]).argmax(-1)
        teach_pred = teacher(x).argmax(-1)
    assert float((dist_pred == teach_pred).float().mean()) >= 0.8
    # at test time the model averages the heads (DeiT)
    cls_logits = student.head(tokens[:, 0])
    assert torch.allclose(student(x), (cls_logits + student.head_dist(tokens[:, 1])) / 2, atol=1e-5)


def test_teacher_must_match_and_needs_a_token(bars, plain_run, tmp_path):
    _, plain = plain_run
    with pytest.raises(ValueError, match="distillation token"):
        train(data=bars, out=str(tmp_path), teacher=str(plain / "best"), **TINY)
    three = Bars(n=64)
    three.classes = ["a", "b", "c"]
    three.labels = [v % 3 for v in three.labels]
    with pytest.raises(ValueError, match="predicts 4 classes"):
        train(data=three, out=str(tmp_path), teacher=str(plain / "best"), distill_token=True, epochs=1, **TINY)


TORCHRUN_SCRIPT = DATASET_SRC + textwrap.dedent('''
    import sys
    from vitscope.train import train
    NO_RANDOM_AUG = dict(epochs=1, lr=2e-3, drop_path=0.0, hflip=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    if __name__ == "__main__":
        train(data=Bars(), out=sys.argv[1], img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4,
              batch_size=32, progress=False, formats=("png",), **NO_RANDOM_AUG)
''')


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(os.path.join(
    os.path.dirname(sys.executable), "torchrun")), reason="torchrun is not installed")
def test_torchrun_two_processes_match_one(tmp_path):
    """Without random augmentation, 2 gloo processes x 16 images = 1 process x 32 images, step for step."""
    script = tmp_path / "run.py"
    script.write_text(TORCHRUN_SCRIPT)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ns: dict = {}
    exec(TORCHRUN_SCRIPT, ns)
    train(data=Bars(), out=str(tmp_path / "one"), **{**TINY, **ns["NO_RANDOM_AUG"]})
    subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", str(script), str(tmp_path / "two")],
                   check=True, env=env, timeout=300, capture_output=True)
    a = load_model(str(tmp_path / "one" / "last")).state_dict()
    b = load_model(str(tmp_path / "two" / "last")).state_dict()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-4
    head = json.loads((tmp_path / "two" / "log.jsonl").read_text().splitlines()[0])
    assert head["world_size"] == 2


def test_cli_train_on_the_synthetic_benchmark(tmp_path):
    from typer.testing import CliRunner

    from vitscope.cli.main import app

    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "train", "synthetic:n=64,size=16", "--out", str(out), "--img-size", "16", "--patch-size", "8",
        "--embed-dim", "16", "--depth", "2", "--num-heads", "2", "--epochs", "1", "--batch-size", "16",
        "--num-registers", "2", "--register-block", "1", "--cls-block", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "best validation accuracy" in res.output
    model = load_model(str(out / "best"))
    assert (model.cfg.num_registers, model.cfg.register_block, model.cfg.cls_block) == (2, 1, 1)
    assert model.cfg.meta["classes"][:2] == ["circle", "square"]
    assert model.meta["extra"]["trained_by"] == "vitscope train"
    bad = CliRunner().invoke(app, ["train", "synthetic:n=64,size=16", "--out", str(tmp_path / "x"),
                                   "--teacher", str(out / "best"), "--quiet"])
    assert bad.exit_code != 0 and "distill-token" in str(bad.exception)


@pytest.mark.slow
def test_lamb_with_repeated_augmentation_learns_and_resumes(bars, tmp_path):
    """The DeiT III / cls-register options: LAMB and repeated augmentation (R = 3) train the bars task, and a resumed
    run restores LAMB's state exactly."""
    opts = dict(data=bars, epochs=4, lr=5e-3, drop_path=0.0, opt="lamb", repeated_aug=3, **TINY)
    summary = train(out=str(tmp_path / "a"), **opts)
    assert summary["best_val_acc"] >= 0.75                                      # chance is 0.25
    train(out=str(tmp_path / "b"), stop_after=2, **opts)
    train(out=str(tmp_path / "b"), resume=True, **opts)
    a, b = load_model(str(tmp_path / "a" / "last")), load_model(str(tmp_path / "b" / "last"))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ValueError, match="opt"):
        train(out=str(tmp_path / "b"), resume=True, **{**opts, "opt": "adamw"})
