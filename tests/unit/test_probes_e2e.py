"""End-to-end probes: the frozen-backbone attentive probe and fine-tuning with a linear head, each against a plain
training loop written in the test from the reference (ciernik2025 section 7 and 8); frozen weights, parameter groups,
resume after an interruption, and the per-step features against the feature store."""
import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitscope import HookedViT, ViTConfig
from vitscope.analysis.probes import AttentiveProbe
from vitscope.analysis.probes.attentive import load_attentive_probe
from vitscope.analysis.probes.e2e import E2EConfig, combine, image_features, model_inputs, open_images, train_e2e
from vitscope.analysis.probes.linear import load_linear_head
from vitscope.features import extract_features
from vitscope.models.loading import load_model
from vitscope.train.loop import epoch_order

TINY = dict(img_size=16, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5)
TRAIN = "synthetic:n=22,size=16,classes=4,split=train"   # 6, 6, 5, 5 images: unequal class weights
TEST = "synthetic:n=12,size=16,classes=4,split=test"
STEPS, BATCH = 6, 8                                 # 22 images: batches of 8, 8, 6 -> 3 per epoch, 2 epochs


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(seed=0):
    torch.manual_seed(seed)
    return HookedViT(ViTConfig(**TINY)).eval()


def images(model, spec):
    ds = open_images(spec, model)
    return torch.stack([ds[i][0] for i in range(len(ds))]), torch.as_tensor(np.asarray(ds.labels))


def weights_by_hand(y, C):
    n = np.bincount(y.numpy(), minlength=C).astype(float)
    k = int(y.max()) + 1
    return torch.tensor([len(y) / (k * n[c]) if c < k and n[c] > 0 else 0.0 for c in range(C)], dtype=torch.float32)


def cosine(base, s, total, lo):
    return lo + 0.5 * (1 + math.cos(math.pi * s / total)) * (base - lo)


def batches(n, seed=0):
    nb = math.ceil(n / BATCH)
    for s in range(STEPS):
        e, b = divmod(s, nb)
        yield s, epoch_order(n, seed, e)[b * BATCH:(b + 1) * BATCH]


# ----------------------------------------------------------------------------- frozen backbone
def test_frozen_backbone_matches_a_plain_loop_and_is_untouched(tmp_path):
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = E2EConfig(recipe="attentive-frozen", steps=STEPS, batch_size=BATCH, jitter_p=0.0, attn_drop=0.0)
    s = train_e2e(model, TRAIN, TEST, cfg, out=tmp_path)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())        # bitwise unchanged
    assert all(p.requires_grad for p in model.parameters())                              # flags restored
    probe, meta = load_attentive_probe(tmp_path / "probe")
    assert meta["inputs"] == [{"site": "ln_final", "layer": None, "reduction": "all"}] and probe.num_heads == 8

    # reference (section 7): all tokens of the final norm, L2 per token, attentive probe, weighted CE, AdamW on
    # every parameter (lr 1e-3, wd 0.1), cosine to 1e-6 without warm-up, clip 5
    x, y = images(model, TRAIN)
    C = 4
    torch.manual_seed(0)
    ref = AttentiveProbe(32, 8, C)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, weight_decay=0.1)
    w = weights_by_hand(y, C)
    ref.train()
    for step, idx in batches(len(y)):
        with torch.no_grad():
            t = model.forward_features(x[idx])                                            # B, T, D after ln_final
            z = t / t.norm(dim=-1, keepdim=True)
        for g in opt.param_groups:
            g["lr"] = cosine(1e-3, step, STEPS, 1e-6)
        ce = F.cross_entropy(ref(z), y[idx], reduction="none")
        loss = (w[y[idx]] * ce).sum() / w[y[idx]].sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 5.0)
        opt.step()
    got = probe.state_dict()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(got[k].float(), v.float(), rtol=1e-4, atol=1e-5, msg=k)
    # test logits of the saved probe on the test images
    xt, yt = images(model, TEST)
    with torch.no_grad():
        t = model.forward_features(xt)
        logits = probe.eval()(t / t.norm(dim=-1, keepdim=True))
    np.testing.assert_allclose(np.load(tmp_path / "logits.npy"), logits.numpy(), rtol=1e-4, atol=1e-5)
    assert s["test_metrics"]["top1"] == pytest.approx(float((logits.argmax(-1) == yt).float().mean()))


# ----------------------------------------------------------------------------- fine-tuning
def test_finetune_matches_a_plain_loop_with_two_parameter_groups(tmp_path):
    model = tiny()
    start = copy.deepcopy(model)
    cfg = E2EConfig(recipe="finetune", steps=STEPS, batch_size=BATCH, jitter_p=0.0, lr=1e-2, backbone_lr_scale=0.1)
    train_e2e(model, TRAIN, None, cfg, out=tmp_path)
    tuned = load_model(tmp_path / "backbone")
    assert not torch.equal(tuned.blocks[0].attn.qkv.weight, start.blocks[0].attn.qkv.weight)   # the backbone moved
    w_head, b_head, meta = load_linear_head(tmp_path / "head")
    assert meta["inputs"] == [{"site": "ln_final", "layer": None, "reduction": "cls"}]

    # the optimiser the run wrote: two groups, backbone (lr x scale, wd 1e-6) and head (lr, wd 0.1), cosine-decayed
    state = torch.load(next((tmp_path / "ckpt").glob("step-*")) / "train_state.pt", weights_only=True)["optimizer"]
    g0, g1 = state["param_groups"]
    assert len(g0["params"]) == len(list(model.parameters())) and len(g1["params"]) == 2
    assert (g0["weight_decay"], g1["weight_decay"]) == (1e-6, 0.1)
    assert g0["lr"] == pytest.approx(cosine(1e-3, STEPS - 1, STEPS, 1e-7), rel=1e-12)    # min 1e-6 x 1e-3 / 1e-2
    assert g1["lr"] == pytest.approx(cosine(1e-2, STEPS - 1, STEPS, 1e-6), rel=1e-12)

    # reference (section 8): CLS of the final norm, L2-normalised, linear head; the backbone in training mode
    x, y = images(start, TRAIN)
    torch.manual_seed(0)
    head = torch.nn.Linear(32, 4)
    opt = torch.optim.AdamW([{"params": list(start.parameters()), "lr": 1e-3, "weight_decay": 1e-6},
                             {"params": list(head.parameters()), "lr": 1e-2, "weight_decay": 0.1}])
    w = weights_by_hand(y, 4)
    start.train()
    for step, idx in batches(len(y)):
        opt.param_groups[0]["lr"] = cosine(1e-3, step, STEPS, 1e-7)
        opt.param_groups[1]["lr"] = cosine(1e-2, step, STEPS, 1e-6)
        z = start.forward_features(x[idx])[:, 0]
        ce = F.cross_entropy(head(z / z.norm(dim=-1, keepdim=True)), y[idx], reduction="none")
        loss = (w[y[idx]] * ce).sum() / w[y[idx]].sum()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(start.parameters()) + list(head.parameters()), 5.0)
        opt.step()
    torch.testing.assert_close(w_head, head.weight.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b_head, head.bias.detach(), rtol=1e-4, atol=1e-5)
    ref_sd = start.state_dict()
    for k, v in tuned.state_dict().items():
        torch.testing.assert_close(v, ref_sd[k], rtol=1e-4, atol=1e-5, msg=k)


# ----------------------------------------------------------------------------- resume
class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_same_result(tmp_path):
    cfg = E2EConfig(recipe="attentive-frozen", layer_set="all", steps=STEPS, batch_size=BATCH, save_every=2)
    train_e2e(tiny(), TRAIN, None, cfg, out=tmp_path / "straight")          # jitter and dropout on (ciernik2025)

    def kill(step):
        if step == 5:                                                        # after the checkpoint of step 4
            raise Killed

    with pytest.raises(Killed):
        train_e2e(tiny(), TRAIN, None, cfg, out=tmp_path / "killed", on_step=kill)
    assert (tmp_path / "killed" / "ckpt" / "step-0000004").is_dir() and not (tmp_path / "killed" / "probe.json").exists()
    with pytest.raises(ValueError, match="--resume"):
        train_e2e(tiny(), TRAIN, None, cfg, out=tmp_path / "killed")
    with pytest.raises(ValueError, match="options differ"):
        train_e2e(tiny(), TRAIN, None, cfg.resolved().__class__(**{**cfg.to_dict(), "lr": 0.1}),
                  out=tmp_path / "killed", resume=True)
    s = train_e2e(tiny(), TRAIN, None, cfg, out=tmp_path / "killed", resume=True)
    assert s["finished"] and s["steps"] == STEPS
    a, _ = load_attentive_probe(tmp_path / "straight" / "probe")
    b, _ = load_attentive_probe(tmp_path / "killed" / "probe")
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())   # bit-identical


def test_finetune_stopped_and_resumed_equals_straight(tmp_path):
    cfg = E2EConfig(recipe="finetune", steps=4, batch_size=BATCH, save_every=100)
    train_e2e(tiny(), TRAIN, None, cfg, out=tmp_path / "a")
    part = train_e2e(tiny(), TRAIN, None, E2EConfig(**{**cfg.to_dict(), "stop_after": 3}), out=tmp_path / "b")
    assert not part["finished"] and part["steps"] == 3
    train_e2e(tiny(), TRAIN, None, cfg, out=tmp_path / "b", resume=True)
    a, b = load_model(tmp_path / "a" / "backbone").state_dict(), load_model(tmp_path / "b" / "backbone").state_dict()
    assert all(torch.equal(v, b[k]) for k, v in a.items())


# ----------------------------------------------------------------------------- features per step vs the store
def test_step_features_equal_the_feature_store(tmp_path):
    torch.manual_seed(1)
    model = HookedViT(ViTConfig(**{**TINY, "num_registers": 2})).eval()
    ds = open_images(TRAIN, model)
    store = extract_features(model, ds, tmp_path / "s", sites="ln2,ln_final", layers="all",
                             tokens="cls,mean,all", progress=False, batch_size=7)
    inputs = model_inputs(model, "ln2.0.cls,ln2.1.ap,ln_final.cls,ln_final.ap,ln_final.all,ln_final.ap_all",
                          "attentive-frozen")
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    with torch.no_grad():
        feats = image_features(model, x[3:11], inputs)
    want = [store["ln2", 0, "cls"], store["ln2", 1, "mean"], store["ln_final", "cls"], store["ln_final", "mean"],
            store["ln_final", "all"], np.asarray(store["ln_final", "all"])[:, 1:].mean(1)]
    for i, f, ref in zip(inputs, feats, want):
        np.testing.assert_allclose(f.numpy(), np.asarray(ref)[3:11], rtol=1e-5, atol=1e-6, err_msg=i.name)
    z = combine(feats, "attentive", 32)                                       # per-token L2, stacked
    assert z.shape == (8, 5 + 7, 32)
    np.testing.assert_allclose(z.norm(dim=-1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_allclose(z[:, 4:11].numpy(), np.asarray(store["ln_final", "all"])[3:11]
                               / np.linalg.norm(store["ln_final", "all"][3:11], axis=-1, keepdims=True),
                               rtol=1e-5, atol=1e-6)


def test_a_second_job_on_the_same_folder_is_refused(tmp_path):
    from vitscope.outlock import OutputLockedError, output_lock

    cfg = E2EConfig(recipe="attentive-frozen", layer_set="last", steps=1, batch_size=BATCH)
    with output_lock(tmp_path / "run", "another probe-e2e", part="rank-0"):           # rank 0 of a running job
        with pytest.raises(OutputLockedError, match="another probe-e2e"):
            train_e2e(tiny(), TRAIN, None, cfg, out=tmp_path / "run")
    assert not (tmp_path / "run" / "probe.json").exists()
    assert train_e2e(tiny(), TRAIN, None, cfg, out=tmp_path / "run")["finished"]     # released: runs


def test_frozen_probe_over_all_layers_of_a_late_cls_model(tmp_path):
    """CLS enters before block 1 of 2: layer set `all` is AP of block 1, CLS of block 1, final CLS and AP; the
    per-step features equal a store extracted from the same images (CLS store + AP store)."""
    from vitscope.analysis.probes.e2e import input_plan, model_inputs

    torch.manual_seed(0)
    model = HookedViT(ViTConfig(**{**TINY, "cls_block": 1})).eval()
    inputs = model_inputs(model, "all", "attentive-frozen")
    assert {i.name for i in inputs} == {"ln2.1.mean", "ln2.1.cls", "ln_final.cls", "ln_final.mean"}
    x, _ = images(model, TRAIN)
    feats = image_features(model, x, inputs, input_plan(model, inputs))
    cls = extract_features(model, TRAIN, tmp_path / "c", sites="ln2,ln_final", layers="1", tokens=("cls",),
                           progress=False)
    ap = extract_features(model, TRAIN, tmp_path / "a", sites="ln2,ln_final", layers="all", tokens=("mean",),
                          progress=False)
    for i, f in zip(inputs, feats):
        st = cls if i.reduction == "cls" else ap
        ref = st.get(i.site, i.layer, i.reduction) if i.layer is not None else st.get(i.site, None, i.reduction)
        np.testing.assert_allclose(f.detach().numpy(), np.asarray(ref), atol=1e-5)
    cfg = E2EConfig(recipe="attentive-frozen", layer_set="all", steps=2, batch_size=BATCH)
    assert train_e2e(model, TRAIN, None, cfg, out=tmp_path / "run")["finished"]
