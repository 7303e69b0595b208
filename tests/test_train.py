"""Training loop: schedule, exact resume, NaN guard, atomic checkpoints, DDP (gloo), CLI entry."""
import json
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lvod.config import Config, DataConfig, TrainConfig, load_config
from lvod.data.cocovid import load_cocovid
from lvod.engine import checkpointing as ckpt_io
from lvod.errors import DataError
from lvod.engine.train import NonFiniteLossError, lr_at, main, scaled_lr, train, train_main
from lvod.models.heads import SoftmaxHead
from test_pipeline import write_tiny_vid

torch.set_num_threads(1)


class TinyDetector(nn.Module):
    """Stand-in with the detector's training interface; draws from the global torch RNG
    (dropout) so that resuming must restore it. ``nan_at``: call that returns a NaN loss."""

    def __init__(self, num_classes: int = 2, nan_at: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.predictor = SoftmaxHead(4, num_classes)                    # fc_cls, fc_reg
        self.nan_at, self.calls = nan_at, 0

    def forward(self, images, image_sizes, targets):
        b, t = images.shape[:2]                                            # [B, T, 3, H, W]
        feats = self.conv(images.flatten(0, 1)).mean((2, 3)).view(b, t, 4).mean(1)  # [B, 4]
        feats = self.drop(feats)
        labels = torch.stack([tg["labels"][0] for tg in targets])
        boxes = torch.stack([tg["boxes"][0] for tg in targets]) / 100
        self.calls += 1
        logits, deltas = self.predictor(feats)                           # [B, C+1], [B, 4C]
        losses = {"loss_cls": F.cross_entropy(logits, labels),
                  "loss_bbox": F.l1_loss(deltas[:, :4], boxes)}
        if self.calls == self.nan_at:
            losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        return losses


def fresh_model(**kw) -> TinyDetector:
    torch.manual_seed(0)  # same initial weights in every run (train() seeds only afterwards)
    return TinyDetector(**kw)


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory):
    root = tmp_path_factory.mktemp("tinytrain")
    vid, _ = write_tiny_vid(root, num_videos=2, num_frames=12, size=(40, 30))
    return [(load_cocovid(vid, images_root=root), True, False)]  # 20 key frames


def make_cfg(**train_kw) -> Config:
    data = replace(DataConfig(), img_scale=[48, 36], imgs_per_gpu=4, workers_per_gpu=0)
    base = dict(lr=0.05, lr_base_batch=4, epochs=2, lr_steps=[1], warmup_iters=3,
                checkpoint_interval=2, log_interval=1, amp=False, progress_bar=False,
                tensorboard=False, deterministic=True)
    return Config(name="tiny", data=data, train=replace(TrainConfig(), **{**base, **train_kw}))


def test_lr_schedule_warmup_steps_and_scaling():
    tc = replace(TrainConfig(), warmup_iters=500, warmup_ratio=1 / 3, lr_steps=[2, 5])
    assert scaled_lr(0.01, 8, 16) == pytest.approx(0.02)
    assert lr_at(0, 1000, 0.01, tc) == pytest.approx(0.01 / 3)
    assert lr_at(250, 1000, 0.01, tc) == pytest.approx(0.01 * (1 - 0.5 * 2 / 3))
    assert lr_at(500, 1000, 0.01, tc) == pytest.approx(0.01)
    assert lr_at(1999, 1000, 0.01, tc) == pytest.approx(0.01)
    assert lr_at(2000, 1000, 0.01, tc) == pytest.approx(0.001)
    assert lr_at(5000, 1000, 0.01, tc) == pytest.approx(0.0001)


def test_resume_mid_epoch_is_exact(tmp_path, tiny_sources):
    straight = train(make_cfg(), tmp_path / "a", model=fresh_model(), sources=tiny_sources)
    assert straight["iter"] == 10                                     # 2 epochs x 5 batches
    train(make_cfg(stop_after_iters=4), tmp_path / "b", model=fresh_model(), sources=tiny_sources)
    state = ckpt_io.load_checkpoint(tmp_path / "b" / "latest.pth")
    assert state["iter"] == 4 and state["sampler"] == {
        "epoch": 0, "batch": 4, "seed": 0, "world_size": 1, "batch_size": 4}
    other = make_cfg()
    other.data.imgs_per_gpu = 2                                     # batch size changed mid-epoch
    with pytest.raises(DataError, match="mid-epoch"):
        train(other, tmp_path / "b", model=fresh_model(), sources=tiny_sources,
              resume=tmp_path / "b" / "latest.pth")
    torch.manual_seed(1234)                                         # must not matter: restored
    resumed = train(make_cfg(), tmp_path / "b", model=fresh_model(), sources=tiny_sources,
                    resume=tmp_path / "b" / "latest.pth")
    assert resumed["iter"] == 10
    a = ckpt_io.load_checkpoint(tmp_path / "a" / "epoch_2.pth")
    b = ckpt_io.load_checkpoint(tmp_path / "b" / "epoch_2.pth")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    mom_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    mom_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(mom_a, mom_b))
    log_a = [json.loads(ln) for ln in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(ln) for ln in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    losses = lambda log: [(r["iter"], r["loss"], r["lr"]) for r in log if r["event"] == "train"]
    assert losses(log_a) == losses(log_b) and len(losses(log_a)) == 10
    assert [r["lr"] for r in log_a if r["event"] == "train"][:4] == pytest.approx(
        [0.05 / 3, 0.05 * 5 / 9, 0.05 * 7 / 9, 0.05])
    assert sorted(p.name for p in (tmp_path / "b").glob("*.pth")) == [
        "epoch_1.pth", "epoch_2.pth", "iter_6.pth", "iter_8.pth", "latest.pth"]  # newest 2 kept
    assert json.loads((tmp_path / "a" / "config.resolved.json").read_text())["train"]["lr"] == 0.05


def test_nan_guard_names_iteration_and_loss(tmp_path, tiny_sources):
    with pytest.raises(NonFiniteLossError, match=r"iteration 3: loss 'loss_bbox' is nan"):
        train(make_cfg(), tmp_path, model=fresh_model(nan_at=3), sources=tiny_sources)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    ckpt_io.save_checkpoint({"iter": 1, "w": torch.ones(3)}, path)

    def crash(obj, fh, *a, **k):
        fh.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckpt_io.save_checkpoint({"iter": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    state = ckpt_io.load_checkpoint(path)
    assert state["iter"] == 1 and torch.equal(state["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]    # no temp file left


def test_rng_state_round_trip_through_weights_only(tmp_path):
    import random

    import numpy as np

    state = ckpt_io.rng_state()
    ckpt_io.save_checkpoint({"rng": [state]}, tmp_path / "r.pth")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt_io.set_rng_state(ckpt_io.load_checkpoint(tmp_path / "r.pth")["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_init_from_and_freeze_all_but_classifier(tmp_path, tiny_sources):
    train(make_cfg(epochs=1), tmp_path / "src", model=fresh_model(), sources=tiny_sources)
    src = ckpt_io.load_checkpoint(tmp_path / "src" / "latest.pth")["model"]
    torch.manual_seed(5)
    model = TinyDetector(num_classes=3)                                # 4 logits instead of 3
    cfg = make_cfg(epochs=1, init_from=str(tmp_path / "src" / "latest.pth"),
                   freeze="all_but_classifier")
    train(cfg, tmp_path / "ft", model=model, sources=tiny_sources)
    log = [json.loads(ln) for ln in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    init = next(r for r in log if r["event"] == "init_from")
    assert init["loaded"] == 2 and sorted(init["shape_mismatch"]) == [
        "predictor.fc_cls.bias", "predictor.fc_cls.weight",
        "predictor.fc_reg.bias", "predictor.fc_reg.weight"]
    out = model.state_dict()
    assert torch.equal(out["conv.weight"], src["conv.weight"])         # loaded, then frozen
    assert not any(p.requires_grad for n, p in model.named_parameters() if "fc_cls" not in n)
    torch.manual_seed(5)
    untouched = TinyDetector(num_classes=3).state_dict()
    assert not torch.equal(out["predictor.fc_cls.weight"], untouched["predictor.fc_cls.weight"])
    assert torch.equal(out["predictor.fc_reg.weight"], untouched["predictor.fc_reg.weight"])


def test_module_entry_parses_like_lvod_train(monkeypatch):
    import lvod.engine.train as engine

    calls = []
    monkeypatch.setattr(engine, "train_main", lambda *a: calls.append(a) or 0)
    assert main(["c.toml", "train.lr=1", "--work-dir", "w", "data.root=/d", "--resume"]) == 0
    assert main(["c.toml", "--resume-from", "x.pth", "--gpus", "2"]) == 0
    assert calls == [("c.toml", "w", 1, True, ["train.lr=1", "data.root=/d"]),
                     ("c.toml", None, 2, "x.pth", [])]


def test_gpus_above_one_relaunches_under_torchrun(tmp_path, monkeypatch, capsys):
    """``train_main(gpus=2)`` runs ``python -m torch.distributed.run`` on this module with the
    config, the overrides, the run folder and the resume choice, and returns its exit code."""
    import sys
    from types import SimpleNamespace

    import lvod.engine.train as engine

    cfg = tmp_path / "tiny.toml"
    cfg.write_text("[train]\nepochs = 1\n")
    launched = []
    monkeypatch.setattr(engine, "subprocess", SimpleNamespace(call=lambda cmd: launched.append(cmd) or 3))
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    run = tmp_path / "run"
    assert train_main(cfg, work_dir=run, gpus=2, overrides=["train.lr=0.1", "data.root=/d"]) == 3
    assert train_main(cfg, work_dir=run, gpus=4, resume=True) == 3
    assert train_main(cfg, work_dir=run, gpus=2, resume="x.pth") == 3
    assert launched[0] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "-m", "lvod.engine.train", str(cfg), "train.lr=0.1", "data.root=/d",
                           "--work-dir", str(run)]
    assert launched[1][3:5] == ["--nproc_per_node", "4"] and launched[1][-1] == "--resume"
    assert launched[2][-2:] == ["--resume-from", "x.pth"]
    assert "launching: " in capsys.readouterr().out and not (run / "log.jsonl").exists()
    # the relaunched module must parse that command line back into the same call
    seen = []
    monkeypatch.setattr(engine, "train_main", lambda *a: seen.append(a) or 0)
    assert main(launched[0][launched[0].index("lvod.engine.train") + 1:]) == 0
    assert seen == [(str(cfg), str(run), 1, False, ["train.lr=0.1", "data.root=/d"])]
    # under torchrun (LOCAL_RANK set) train_main trains itself instead of launching again
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(engine, "train", lambda *a, **k: {"iter": 0, "epoch": 0, "run_dir": str(run)})
    assert train_main(cfg, work_dir=run, gpus=2) == 0 and len(launched) == 3


def test_tensorboard_missing_prints_one_warning_and_logs_to_jsonl(tmp_path, monkeypatch, capsys):
    import sys

    from lvod.engine.train import RunLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # import now raises ImportError
    log = RunLog(tmp_path, None, tensorboard=True)
    log({"event": "train", "iter": 1, "loss": 0.5})
    log.close()
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: train.tensorboard is on but the tensorboard package is not installed: "
                   "pip install 'lvod[tensorboard]'; logging to log.jsonl only"]
    assert log.tb is None and json.loads((tmp_path / "log.jsonl").read_text())["loss"] == 0.5
    RunLog(tmp_path, None, tensorboard=False).close()                      # off: no warning
    assert capsys.readouterr().err == ""


def _ddp_worker(rank, world, port, run_dir, sources):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    import torch.distributed as dist
    try:
        train(make_cfg(epochs=1), run_dir, model=fresh_model(), sources=sources)
    finally:
        dist.destroy_process_group()


def test_two_process_ddp_trains_and_checkpoints(tmp_path, tiny_sources):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the workers share the parent's imports (spawn would re-import torch twice)
    ctx = torch.multiprocessing.start_processes(
        _ddp_worker, args=(2, port, tmp_path, tiny_sources), nprocs=2, join=False,
        start_method="fork")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("2-process gloo training did not finish within 120 s")
    state = ckpt_io.load_checkpoint(tmp_path / "latest.pth")
    assert state["iter"] == 3 and state["epoch"] == 1                # 20 frames / (2 x 4)
    assert len(state["rng"]) == 2 and state["sampler"]["world_size"] == 2
    start = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2 and start["base_lr"] == pytest.approx(0.05 * 8 / 4)


def test_train_main_with_real_detector(tmp_path, tiny_sources, capsys):
    """Config file -> run folder with the single-frame R18 detector, then auto-resume."""
    root = tmp_path / "data"
    write_tiny_vid(root, num_videos=1, num_frames=3, size=(128, 96))
    cfg = tmp_path / "tiny_single.toml"
    cfg.write_text(f"""
[data]
root = "{root.as_posix()}"
train = [{{ann_file = "vid.json", images_root = ".", key_frames_only = false}}]
img_scale = [128, 96]
workers_per_gpu = 0
num_ref_frames = 0
[model]
kind = "single"
depth = 18
num_classes = 2
rpn_train_pre_nms = 200
rpn_train_post_nms = 50
[train]
epochs = 1
warmup_iters = 2
progress_bar = false
log_interval = 1
amp = false
""")
    run = tmp_path / "run"
    assert train_main(cfg, work_dir=run, overrides=["train.stop_after_iters=1"]) == 0
    assert f"run folder: {run}" in capsys.readouterr().out
    assert ckpt_io.load_checkpoint(run / "latest.pth")["iter"] == 1
    assert load_config(run / "config.resolved.json").model.depth == 18
    assert train_main(cfg, work_dir=run) == 0                        # auto-resumes at 1
    out = capsys.readouterr().out
    assert "resuming from" in out and "done: 3 iterations" in out
    lines = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in lines if r["event"] == "train"] == [1, 2, 3]
    assert all(r["loss"] > 0 for r in lines if r["event"] == "train")
