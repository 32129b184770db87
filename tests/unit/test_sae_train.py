"""Training SAEs from a feature store: planted dictionary recovered, resume bit-identical, the grid equal to its
members trained alone, memory bounded by the chunk, bad stores one line."""
import numpy as np
import pytest
import torch

from sae_fixtures import planted, write_store
from vitscope.analysis.sae.io import load_sae
from vitscope.analysis.sae.train import TrainOptions, Trainer, lr_at, train_saes


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    x, D = planted(n_images=150, tokens=8, d=16, atoms=32, active=2)
    p = write_store(tmp_path_factory.mktemp("planted") / "store", {("resid_post", 2, "patches"): x,
                                                                    ("resid_post", 3, "patches"): x[::-1] * 2})
    return p, D


def _best_cos(sae, D):
    W = sae.W_dec[0].detach().numpy()
    W = W / np.linalg.norm(W, axis=1, keepdims=True)
    return (np.abs(D @ W.T)).max(1)


@pytest.mark.slow
def test_planted_dictionary_is_recovered(store):
    path, D = store
    opts = TrainOptions(blocks="2", arch="topk", width=(64,), k=(2,), lr=(3e-3,), steps=600, batch_size=128,
                        chunk_images=50, warmup=30, dead_after=5_000, log_every=100, checkpoint_every=10_000)
    sae = next(iter(train_saes(path, opts).values()))
    cos = _best_cos(sae, D)
    assert cos.mean() >= 0.9, cos.mean()


def _opts(**kw):
    base = dict(blocks="2,3", arch="topk", width=(32, 48), k=(2, 4), lr=(1e-3,), steps=24, batch_size=64,
                chunk_images=20, warmup=5, dead_after=300, log_every=4, checkpoint_every=10, init_rows=256,
                device="cpu")                       # bit-identical comparisons: the CPU whatever the machine
    base.update(kw)
    return TrainOptions(**base)


@pytest.mark.parametrize("arch", ["topk", *(pytest.param(a, marks=pytest.mark.slow)
                                             for a in ("relu", "jumprelu", "batchtopk", "matryoshka"))])
def test_resume_is_bit_identical(store, tmp_path, arch):
    path, _ = store
    opts = _opts(arch=arch, resample_every=6, l1=(0.01,))
    straight = Trainer(path, opts).run()
    tr = Trainer(path, opts, out=tmp_path / "run")
    tr.run(steps=13)                      # checkpoint written at step 10, then 3 more steps lost
    resumed = Trainer(path, opts, out=tmp_path / "run")
    assert resumed.try_resume() and resumed.step == 10
    got = resumed.run()
    assert set(got) == set(straight)
    for name in straight:
        for k, v in straight[name].state_dict().items():
            assert torch.equal(v, got[name].state_dict()[k]), (name, k)
    # and the saved SAEs load back equal
    for name, sae in got.items():
        back = load_sae(tmp_path / "run" / name)
        x = torch.randn(5, 16)
        torch.testing.assert_close(back.reconstruct(x), sae.reconstruct(x), rtol=0, atol=0)


def test_resume_ignores_device_threads_and_progress(store, tmp_path):
    """A run interrupted with one progress / thread / device setting resumes with another (they do not change the
    SAEs); any other option still refuses."""
    path, _ = store
    opts = _opts(arch="topk")
    tr = Trainer(path, opts, out=tmp_path / "run")
    tr.run(steps=13)
    again = Trainer(path, opts.replace(progress=True, threads=1, device="cpu"), out=tmp_path / "run")
    assert again.try_resume() and again.step == 10
    with pytest.raises(ValueError, match="other training options"):
        Trainer(path, opts.replace(seed=1), out=tmp_path / "run").try_resume()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA device"))])
def test_device_option(store, device):
    """``device``: the SAEs train there and come back on the CPU; on the CPU the result is the default run's."""
    path, _ = store
    opts = _opts(arch="topk")
    base = Trainer(path, opts).run()
    got = Trainer(path, opts.replace(device=device)).run()
    for name, sae in got.items():
        assert all(t.device.type == "cpu" for t in sae.state_dict().values())
        for k, v in base[name].state_dict().items():
            if device == "cpu":
                assert torch.equal(v, sae.state_dict()[k]), (name, k)
        if device != "cpu":                   # another device's kernels: the same quality, not the same bits
            x = Trainer(path, opts).stream.sample(512)[sae.cfg.block[0]]
            err = [float((m.reconstruct(x) - x).pow(2).sum(-1).mean()) for m in (sae, base[name])]
            assert err[0] <= 1.5 * err[1] + 1e-6, (name, err)


def test_grid_equals_members_trained_alone(store):
    path, _ = store
    grid = Trainer(path, _opts()).run()
    for w in (32, 48):
        for k in (2, 4):
            for b in (2, 3):
                alone = Trainer(path, _opts(width=(w,), k=(k,), blocks=str(b))).run()
                (name, sae), = alone.items()
                for key, v in sae.state_dict().items():
                    torch.testing.assert_close(grid[name].state_dict()[key], v, rtol=1e-5, atol=1e-6)


def test_same_seed_same_sae_other_seed_other(store):
    path, _ = store
    a = Trainer(path, _opts(width=(32,), k=(2,), blocks="2")).run()
    b = Trainer(path, _opts(width=(32,), k=(2,), blocks="2")).run()
    c = Trainer(path, _opts(width=(32,), k=(2,), blocks="2", seed=1)).run()
    (sa,), (sb,), (sc,) = a.values(), b.values(), c.values()
    assert torch.equal(sa.W_dec, sb.W_dec) and not torch.equal(sa.W_dec, sc.W_dec)


def test_stream_reads_one_chunk_at_a_time(store):
    from vitscope.analysis.sae.data import StoreStream
    from vitscope.features import open_store

    s = open_store(store[0])
    st = StoreStream(s, "resid_post", [2], "patches", batch_size=32, chunk_images=10, seed=0)
    reads = []
    orig = st.read_chunk
    st.read_chunk = lambda imgs: reads.append(len(imgs)) or orig(imgs)
    seen = [step for step, _ in st(0, st.steps_per_epoch)]
    assert seen == list(range(st.steps_per_epoch)) and max(reads) == 10 and len(reads) == 15
    # every token of an epoch at most once
    rows = torch.cat([b[2] for _, b in st(0, st.steps_per_epoch)])
    assert len(torch.unique(rows, dim=0)) == len(rows)
    # starting at step s gives the same batches as the tail of a full run
    full = [b[2] for _, b in st(0, 40)]
    tail = [b[2] for _, b in st(25, 15)]
    for a, b in zip(full[25:], tail):
        assert torch.equal(a, b)


def test_initialisation_sample_reads_only_its_images(store):
    """The sample for initialisation and normalisation is drawn over the whole store: only its images are read from
    the memmap (reading the span between the first and the last would hold most of the store in memory)."""
    from vitscope.analysis.sae.data import StoreStream
    from vitscope.features import open_store

    s = open_store(store[0])
    st = StoreStream(s, "resid_post", [2], "patches", batch_size=32, chunk_images=10, seed=0)
    arr = st.arrays[2]
    read = []

    class Spy:
        shape, ndim = arr.shape, arr.ndim

        def __getitem__(self, key):
            out = np.asarray(arr[key])
            read.append(out.shape[0] if isinstance(key, slice) else 1)
            return out

    st.arrays[2] = Spy()
    got = st.sample(3 * st.per_image)                                  # 3 images spread over the store
    assert sum(read) == 3, read
    st.arrays[2] = arr
    assert torch.equal(got[2], st.sample(3 * st.per_image)[2])        # the same rows as a plain read


def test_lr_schedule():
    assert [round(lr_at(s, 100, 10, 0.2), 3) for s in (0, 4, 9, 50, 80, 90, 99)] == [0.1, 0.5, 1, 1, 1, 0.5, 0.05]


@pytest.mark.parametrize("kw, msg", [
    (dict(site="ln2"), "holds sites"), (dict(blocks="1"), "holds blocks"), (dict(tokens="cls"), "token reductions"),
    (dict(batch_size=2000), r"150 images x 8 tokens are 1200 rows, fewer than one batch of 2000; lower "
                            r"--batch-size to at most 1200"),
    (dict(limit=5), r"5 images x 8 tokens are 40 rows, fewer than one batch of 64; lower --batch-size to at most 40"),
    (dict(batch_size=100, chunk_images=10), r"a chunk of 10 images x 8 tokens holds fewer rows than one batch of "
                                            r"100; raise --chunk-images"),
])
def test_store_without_what_is_asked(store, kw, msg, tmp_path):
    with pytest.raises(ValueError, match=msg) as e:
        train_saes(store[0], _opts(**kw), out=tmp_path / "o")
    assert "\n" not in str(e.value) and not (tmp_path / "o").exists()


@pytest.mark.parametrize("kw, msg", [(dict(width=(0,)), "positive"), (dict(k=(64,), width=(32,)), "exceed"),
                                     (dict(arch="nope"), "arch")])
def test_bad_options(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _opts(**kw)


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_read_rows_equals_the_memory_map(tmp_path, dtype):
    """The stream's file read of a store array gives the memory map's rows, for every span and storage dtype."""
    from vitscope.analysis.sae.data import read_rows

    a = np.random.default_rng(0).normal(size=(9, 5, 3)).astype(dtype)
    np.save(tmp_path / "a.npy", a)
    mm = np.load(tmp_path / "a.npy", mmap_mode="r")
    for lo, hi in ((0, 9), (0, 1), (3, 7), (8, 9)):
        got = read_rows(mm, lo, hi)
        assert got.dtype == a.dtype and np.array_equal(got, a[lo:hi])
    assert np.array_equal(read_rows(mm[2:], 1, 3), a[3:5])        # a view of a map: sliced, not read by offset


def test_stacks_split_at_the_byte_cap_and_train_the_same(store, monkeypatch):
    """On the CPU a width's members are split into stacks of at most CPU_STACK_BYTES of latents per batch; every
    member, its name and its learning rate stay, and the SAEs are those of one stack."""
    import vitscope.analysis.sae.train as T

    path, _ = store
    opts = _opts(lr=(1e-3, 2e-3))
    whole = T.build_stacks(opts, [2, 3], 16)
    cap = 4 * opts.batch_size * 48 * 3                       # three members of width 48, seven of width 32
    parts = T.build_stacks(opts, [2, 3], 16, cap)
    assert [sae.n for sae, _, _ in whole] == [8, 8] and [sae.n for sae, _, _ in parts] == [4, 4, 3, 3, 2]
    assert all(4 * opts.batch_size * sae.cfg.width * sae.n <= cap for sae, _, _ in parts)
    flat = lambda stacks: [(n, lr) for _, lrs, names in stacks for n, lr in zip(names, lrs)]  # noqa: E731
    assert sorted(flat(parts)) == sorted(flat(whole))
    one = Trainer(path, opts).run()
    monkeypatch.setattr(T, "CPU_STACK_BYTES", cap)
    split = Trainer(path, opts).run()
    assert set(split) == set(one)
    for name in one:
        for key, v in one[name].state_dict().items():
            torch.testing.assert_close(split[name].state_dict()[key], v, rtol=1e-5, atol=1e-6)


@pytest.fixture
def ctrl_c():
    """SIGINT as an interactive shell delivers it (Python's KeyboardInterrupt handler), whatever the test process
    inherited: a process started in the background of a non-interactive shell ignores SIGINT."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_ctrl_c_finishes_the_step_and_saves_it(store, tmp_path, ctrl_c):
    """SIGINT in the middle of step 7 (checkpoints every 10): the step finishes, a checkpoint of 8 steps is written,
    the run stops with a line saying so, and resuming gives the uninterrupted run bit for bit."""
    import signal

    path, _ = store
    opts = _opts(arch="topk")
    straight = Trainer(path, opts).run()
    tr = Trainer(path, opts, out=tmp_path / "run")
    step = tr._step
    before = signal.getsignal(signal.SIGINT)

    def step_with_ctrl_c(i, batch):
        if i == 7:
            signal.raise_signal(signal.SIGINT)            # arrives before the step's work
        step(i, batch)

    tr._step = step_with_ctrl_c
    with pytest.raises(KeyboardInterrupt, match=r"interrupted after step 8 of \d+: saved to .*checkpoint; run "
                                                r"the same command to resume"):
        tr.run()
    assert signal.getsignal(signal.SIGINT) is before                          # the handler is put back
    resumed = Trainer(path, opts, out=tmp_path / "run")
    assert resumed.try_resume() and resumed.step == 8
    got = resumed.run()
    for name in straight:
        for k, v in straight[name].state_dict().items():
            assert torch.equal(v, got[name].state_dict()[k]), (name, k)


def test_a_second_ctrl_c_stops_at_once(ctrl_c):
    import signal

    from vitscope.analysis.sae.train import stop_at_step_end

    with stop_at_step_end() as stop:
        signal.raise_signal(signal.SIGINT)
        assert stop.asked
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_where_sigint_is_ignored_training_leaves_it_ignored():
    """A run started with SIGINT ignored (nohup, a background job of a script) keeps ignoring it: no handler is
    installed, and the disposition is the same afterwards."""
    import signal

    from vitscope.analysis.sae.train import stop_at_step_end

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with stop_at_step_end() as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
            assert not stop.asked
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_without_an_output_folder_ctrl_c_stops_at_once(store, ctrl_c):
    """Nowhere to save (``out=None``, as the report trains its SAE): Ctrl-C is a plain KeyboardInterrupt, raised
    where it lands."""
    import signal

    tr = Trainer(store[0], _opts(arch="topk"))
    step = tr._step
    done = []

    def step_with_ctrl_c(i, batch):
        if i == 7:
            signal.raise_signal(signal.SIGINT)
        step(i, batch)
        done.append(i)

    tr._step = step_with_ctrl_c
    with pytest.raises(KeyboardInterrupt) as e:
        tr.run()
    assert not e.value.args and done == list(range(7))
