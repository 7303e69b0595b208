"""Training loop: schedule, exact resume, resume config check, loss/diagnostic split, NaN guard,
atomic checkpoints, DDP (gloo), the launch helpers the CLI uses."""

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

from lvod.config import Config, DataConfig, TrainConfig, config_to_dict, load_config
from lvod.data.cocovid import load_cocovid
from lvod.engine import checkpointing as ckpt_io
from lvod.engine.train import (
    NonFiniteLossError,
    default_run_dir,
    find_resume_checkpoint,
    lr_at,
    scaled_lr,
    torchrun_command,
    train,
)
from lvod.errors import DataError
from lvod.models.heads import SoftmaxHead

torch.set_num_threads(1)


class TinyDetector(nn.Module):
    """Stand-in with the detector's training interface; draws from the global torch RNG
    (dropout) so that resuming must restore it. ``nan_at``: call that returns a NaN loss."""

    def __init__(self, num_classes: int = 2, nan_at: int | None = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.predictor = SoftmaxHead(4, num_classes)  # fc_cls, fc_reg
        self.nan_at, self.calls = nan_at, 0

    def forward(self, images, image_sizes, targets):
        b, t = images.shape[:2]  # [B, T, 3, H, W]
        feats = self.conv(images.flatten(0, 1)).mean((2, 3)).view(b, t, 4).mean(1)  # [B, 4]
        feats = self.drop(feats)
        labels = torch.stack([tg["labels"][0] for tg in targets])
        boxes = torch.stack([tg["boxes"][0] for tg in targets]) / 100
        self.calls += 1
        logits, deltas = self.predictor(feats)  # [B, C+1], [B, 4C]
        losses = {"loss_cls": F.cross_entropy(logits, labels), "loss_bbox": F.l1_loss(deltas[:, :4], boxes)}
        if self.calls == self.nan_at:
            losses["loss_bbox"] = losses["loss_bbox"] * float("nan")
        return losses


def fresh_model(**kw) -> TinyDetector:
    torch.manual_seed(0)  # same initial weights in every run (train() seeds only afterwards)
    return TinyDetector(**kw)


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory, tiny_vid):
    root = tmp_path_factory.mktemp("tinytrain")
    vid, _ = tiny_vid(root, num_videos=2, num_frames=12, size=(40, 30))
    return [(load_cocovid(vid, images_root=root), True, False)]  # 20 key frames


def make_cfg(**train_kw) -> Config:
    data = replace(DataConfig(), img_scale=[48, 36], imgs_per_gpu=4, workers_per_gpu=0)
    base = dict(
        lr=0.05,
        lr_base_batch=4,
        epochs=2,
        lr_steps=[1],
        warmup_iters=3,
        checkpoint_interval=2,
        log_interval=1,
        amp=False,
        progress_bar=False,
        tensorboard=False,
        deterministic=True,
    )
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
    assert straight["iter"] == 10  # 2 epochs x 5 batches
    train(make_cfg(stop_after_iters=4), tmp_path / "b", model=fresh_model(), sources=tiny_sources)
    state = ckpt_io.load_checkpoint(tmp_path / "b" / "latest.pth")
    assert state["iter"] == 4 and state["sampler"] == {
        "epoch": 0,
        "batch": 4,
        "seed": 0,
        "world_size": 1,
        "batch_size": 4,
    }
    other = make_cfg()
    other.data.imgs_per_gpu = 2  # batch size changed mid-epoch
    with pytest.raises(DataError, match="mid-epoch"):
        train(other, tmp_path / "b", model=fresh_model(), sources=tiny_sources, resume=tmp_path / "b" / "latest.pth")
    torch.manual_seed(1234)  # must not matter: restored
    resumed = train(
        make_cfg(), tmp_path / "b", model=fresh_model(), sources=tiny_sources, resume=tmp_path / "b" / "latest.pth"
    )
    assert resumed["iter"] == 10
    a = ckpt_io.load_checkpoint(tmp_path / "a" / "epoch_2.pth")
    b = ckpt_io.load_checkpoint(tmp_path / "b" / "epoch_2.pth")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert "ema" not in a  # the weight average is off by default (train.ema_decay = 0)
    mom_a = [s["momentum_buffer"] for s in a["optimizer"]["state"].values()]
    mom_b = [s["momentum_buffer"] for s in b["optimizer"]["state"].values()]
    assert all(torch.equal(x, y) for x, y in zip(mom_a, mom_b))
    log_a = [json.loads(ln) for ln in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(ln) for ln in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    losses = lambda log: [(r["iter"], r["loss"], r["lr"]) for r in log if r["event"] == "train"]
    assert losses(log_a) == losses(log_b) and len(losses(log_a)) == 10
    diff = [r for r in log_b if r["event"] == "resume_config_diff"]  # stop_after_iters 4 -> 0
    assert [(r["iter"], r["changed"]) for r in diff] == [(4, {"train.stop_after_iters": [4, 0]})]
    assert [r["lr"] for r in log_a if r["event"] == "train"][:4] == pytest.approx(
        [0.05 / 3, 0.05 * 5 / 9, 0.05 * 7 / 9, 0.05]
    )
    # a run keeps its newest checkpoint only (train.keep_checkpoints adds epoch ends)
    assert sorted(p.name for p in (tmp_path / "b").glob("*.pth")) == ["epoch_2.pth", "latest.pth"]
    assert json.loads((tmp_path / "a" / "config.resolved.json").read_text())["train"]["lr"] == 0.05


def test_weight_average_is_checkpointed_and_resumes_exactly(tmp_path, tiny_sources):
    """train.ema_decay: the checkpoint keeps the moving average beside the raw weights; after
    one step it is d * initial + (1 - d) * stepped; a mid-epoch resume continues it exactly."""
    from lvod.engine.ema import ema_decay_at

    initial = fresh_model().state_dict()
    train(make_cfg(ema_decay=0.9, stop_after_iters=1), tmp_path / "one", model=fresh_model(), sources=tiny_sources)
    one = ckpt_io.load_checkpoint(tmp_path / "one" / "latest.pth")
    d = ema_decay_at(1, 0.9)
    assert one["ema"]["updates"] == 1 and one["ema"]["decay"] == 0.9
    for k in ("conv.weight", "predictor.fc_cls.weight"):
        expected = d * initial[k] + (1 - d) * one["model"][k]
        assert torch.allclose(one["ema"]["weights"][k], expected, atol=1e-7), k
        assert not torch.equal(one["ema"]["weights"][k], one["model"][k])

    def resume_b(decay):
        return train(
            make_cfg(ema_decay=decay),
            tmp_path / "b",
            model=fresh_model(),
            sources=tiny_sources,
            resume=tmp_path / "b" / "latest.pth",
        )

    train(make_cfg(ema_decay=0.9), tmp_path / "a", model=fresh_model(), sources=tiny_sources)
    train(make_cfg(ema_decay=0.9, stop_after_iters=4), tmp_path / "b", model=fresh_model(), sources=tiny_sources)
    resume_b(0.9)
    a = ckpt_io.load_checkpoint(tmp_path / "a" / "epoch_2.pth")
    b = ckpt_io.load_checkpoint(tmp_path / "b" / "epoch_2.pth")
    assert a["ema"]["updates"] == b["ema"]["updates"] == 10
    for k, v in a["ema"]["weights"].items():
        assert torch.equal(v, b["ema"]["weights"][k]), k
    assert ckpt_io.state_dict_of(a) is a["ema"]["weights"] and ckpt_io.state_dict_of(a, use_ema=False) is a["model"]
    # changing the decay on a resume would change the average: refused
    with pytest.raises(DataError, match="ema_decay"):
        resume_b(0.5)


def test_keep_checkpoints_keeps_the_newest_and_the_epoch_ends_asked_for(tmp_path, tiny_sources):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "epoch_9_notes.pth").write_bytes(b"mine")  # not a checkpoint name: untouched
    train(make_cfg(epochs=3, keep_checkpoints=[1]), tmp_path / "run", model=fresh_model(), sources=tiny_sources)
    names = sorted(p.name for p in (tmp_path / "run").glob("*.pth"))
    assert names == ["epoch_1.pth", "epoch_3.pth", "epoch_9_notes.pth", "latest.pth"]
    assert (tmp_path / "run" / "latest.pth").read_bytes() == (tmp_path / "run" / "epoch_3.pth").read_bytes()


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
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]  # no temp file left


def test_rng_state_round_trip_through_weights_only(tmp_path):
    import random

    import numpy as np

    state = ckpt_io.rng_state()
    ckpt_io.save_checkpoint({"rng": [state]}, tmp_path / "r.pth")
    want = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt_io.set_rng_state(ckpt_io.load_checkpoint(tmp_path / "r.pth")["rng"][0])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == want


def test_init_from_refuses_a_checkpoint_whose_box_regression_does_not_fit(tmp_path, tiny_sources):
    """Only the classifier may differ between the source run and a decoupled run: a
    2-class source into a 3-class model changes ``fc_reg`` too, and that is refused before
    anything is written (the decoupled cases themselves: tests/test_decoupled.py)."""
    train(make_cfg(epochs=1), tmp_path / "src", model=fresh_model(), sources=tiny_sources)
    torch.manual_seed(5)
    cfg = make_cfg(epochs=1, init_from=str(tmp_path / "src" / "latest.pth"), freeze="all_but_classifier")
    with pytest.raises(DataError, match="fc_reg"):
        train(cfg, tmp_path / "ft", model=TinyDetector(num_classes=3), sources=tiny_sources)
    assert not (tmp_path / "ft" / "latest.pth").exists()


def test_find_resume_checkpoint(tmp_path):
    with pytest.raises(DataError, match="latest.pth: resume: there is no checkpoint.*drop --resume"):
        find_resume_checkpoint(tmp_path, True)
    assert find_resume_checkpoint(tmp_path, False) is None
    assert find_resume_checkpoint(tmp_path, None) is None
    assert find_resume_checkpoint(tmp_path, "x/iter_4.pth") == Path("x/iter_4.pth")
    (tmp_path / "latest.pth").write_bytes(b"")
    assert find_resume_checkpoint(tmp_path, True) == tmp_path / "latest.pth"
    assert find_resume_checkpoint(tmp_path, False) == tmp_path / "latest.pth"
    assert find_resume_checkpoint(tmp_path, tmp_path / "e.pth") == tmp_path / "e.pth"  # explicit wins


def test_torchrun_command_relaunches_lvod_train(tmp_path):
    import sys

    head = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "-m",
        "lvod.cli",
        "train",
        "c.toml",
        "train.lr=0.1",
        "data.root=/d",
        "--work-dir",
        "w",
    ]
    assert torchrun_command("c.toml", "w", 2, False, ["train.lr=0.1", "data.root=/d"]) == head
    assert torchrun_command("c.toml", "w", 2, None, ["train.lr=0.1", "data.root=/d"]) == head
    assert torchrun_command(Path("c.toml"), Path("w"), 4, True, [])[3:] == [
        "--nproc_per_node",
        "4",
        "-m",
        "lvod.cli",
        "train",
        "c.toml",
        "--work-dir",
        "w",
        "--resume",
    ]
    assert torchrun_command("c.toml", "w", 2, Path("x.pth"), [])[-2:] == ["--resume-from", "x.pth"]
    assert default_run_dir(Config(name="fgfa_r18")) == Path("work_dirs/fgfa_r18")


class DiagnosticDetector(TinyDetector):
    """TinyDetector plus two diagnostics: ``diag_b`` = ``100 * b * call`` with ``b`` a
    parameter of its own (it requires grad), and ``diag_nan`` (NaN at call 2)."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.ones(()))

    def forward(self, images, image_sizes, targets):
        losses = super().forward(images, image_sizes, targets)
        losses["diag_b"] = 100 * self.b * self.calls
        losses["diag_nan"] = torch.tensor(float("nan") if self.calls == 2 else 1.0)
        return losses


def test_only_loss_terms_are_optimised_and_diagnostics_are_logged(tmp_path, tiny_sources):
    train(make_cfg(epochs=1, log_interval=2), tmp_path / "plain", model=fresh_model(), sources=tiny_sources)
    model = DiagnosticDetector()
    torch.manual_seed(0)
    model.load_state_dict({**fresh_model().state_dict(), "b": torch.ones(())})
    assert model.b.requires_grad and model.b.grad is None
    train(make_cfg(epochs=1, log_interval=2), tmp_path / "diag", model=model, sources=tiny_sources)
    assert model.b.grad is None and model.b.item() == 1.0  # never backpropagated, nor decayed
    plain = ckpt_io.load_checkpoint(tmp_path / "plain" / "epoch_1.pth")["model"]
    diag = ckpt_io.load_checkpoint(tmp_path / "diag" / "epoch_1.pth")["model"]
    for k in plain:  # the same training as without them
        assert torch.equal(plain[k], diag[k]), k
    read = lambda run: [
        json.loads(ln) for ln in (tmp_path / run / "log.jsonl").read_text().splitlines() if '"train"' in ln
    ]
    for p, d in zip(read("plain"), read("diag"), strict=True):  # iters 2, 4, 5: means of 2, 2, 1
        assert (d["loss"], d["loss_cls"], d["loss_bbox"]) == (p["loss"], p["loss_cls"], p["loss_bbox"])
        assert d["loss"] == pytest.approx(d["loss_cls"] + d["loss_bbox"])  # the total excludes them
    assert [r["diag_b"] for r in read("diag")] == pytest.approx([150.0, 350.0, 500.0])
    assert [r["diag_nan"] != r["diag_nan"] for r in read("diag")] == [True, False, False]  # NaN: logged


class DtypeRecorder(TinyDetector):
    """TinyDetector that records the dtype its convolution computes in."""

    def forward(self, images, image_sizes, targets):
        self.seen = self.conv(images.flatten(0, 1)).dtype
        return super().forward(images, image_sizes, targets)


def test_cpu_amp_trains_under_bfloat16_autocast_with_float32_weights(tmp_path, tiny_sources):
    torch.manual_seed(0)  # both runs start from the same weights
    model = DtypeRecorder()
    train(make_cfg(epochs=1, amp=True), tmp_path / "fp32", model=model, sources=tiny_sources)
    assert model.seen == torch.float32  # train.amp is CUDA's float16: nothing on a CPU
    torch.manual_seed(0)
    model = DtypeRecorder()
    train(make_cfg(epochs=1, cpu_amp=True), tmp_path / "bf16", model=model, sources=tiny_sources)
    assert model.seen == torch.bfloat16
    state = ckpt_io.load_checkpoint(tmp_path / "bf16" / "epoch_1.pth")
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    assert state["scaler"] == {}  # no grad scaler for bfloat16
    fp32 = ckpt_io.load_checkpoint(tmp_path / "fp32" / "epoch_1.pth")["model"]
    assert not torch.equal(fp32["conv.weight"], state["model"]["conv.weight"])  # it did train in bfloat16
    start = json.loads((tmp_path / "bf16" / "log.jsonl").read_text().splitlines()[0])
    assert start["amp"] == "bfloat16"
    assert json.loads((tmp_path / "fp32" / "log.jsonl").read_text().splitlines()[0])["amp"] is False


def test_config_differences_allows_only_keys_that_keep_the_run():
    old = config_to_dict(make_cfg())
    new = config_to_dict(make_cfg(stop_after_iters=4, epochs=12, lr=0.1, progress_bar=True))
    new["name"], new["data"]["root"], new["test"]["workers"] = "other", "/elsewhere", 7
    new["data"]["img_scale"] = [64, 48]
    new["model"]["backbone_weights"] = "r50.pth"
    del new["train"]["lr_gamma"]
    harmless, refused = ckpt_io.config_differences(old, new)
    assert harmless == {
        "data.root": ("data/ILSVRC2015", "/elsewhere"),
        "model.backbone_weights": (None, "r50.pth"),
        "name": ("tiny", "other"),
        "test.workers": (2, 7),
        "train.epochs": (2, 12),
        "train.progress_bar": (False, True),
        "train.stop_after_iters": (0, 4),
    }
    assert refused == {
        "data.img_scale": ([48, 36], [64, 48]),
        "train.lr": (0.05, 0.1),
        "train.lr_gamma": (0.1, "<absent>"),
    }
    assert ckpt_io.config_differences(old, config_to_dict(make_cfg())) == ({}, {})


def test_resume_with_a_changed_lr_is_refused_and_leaves_the_run_alone(tmp_path, tiny_sources):
    run = tmp_path / "run"
    train(make_cfg(stop_after_iters=2), run, model=fresh_model(), sources=tiny_sources)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(DataError) as err:
        train(make_cfg(lr=0.1), run, model=fresh_model(), sources=tiny_sources, resume=run / "latest.pth")
    assert err.value.file == str(run / "latest.pth") and err.value.record == "config"
    assert err.value.problem.endswith("train.lr: 0.05 -> 0.1")  # stop_after_iters is not refused
    assert "config.resolved.json" in err.value.fix and "--work-dir" in err.value.fix
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_resume_check_migrates_an_old_checkpoint_config():
    """A checkpoint written before data.mean/std moved to the model resumes with the
    current config (the same values under the new names); a changed mean is refused."""
    cfg = make_cfg()
    old = config_to_dict(cfg)
    model = old["model"]
    old["data"].update(mean=model.pop("image_mean"), std=model.pop("image_std"))
    assert ckpt_io.check_resume_config({"config": old}, cfg, "old.pth") == {}
    old["data"]["mean"] = [0.0, 0.0, 0.0]
    with pytest.raises(DataError, match=r"old.pth: config: .*model.image_mean"):
        ckpt_io.check_resume_config({"config": old}, cfg, "old.pth")


def test_tensorboard_missing_warns_once_and_logs_to_jsonl(tmp_path, monkeypatch, capsys):
    import sys
    import warnings

    from lvod.engine.runlog import RunLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import now raises ImportError
    with pytest.warns(UserWarning) as caught:
        log = RunLog(tmp_path, None, tensorboard=True)
    assert [str(w.message) for w in caught] == [
        "train.tensorboard is on but the tensorboard package is not installed: "
        "pip install 'lvod[tensorboard]'; logging to log.jsonl only"
    ]
    log({"event": "train", "iter": 1, "loss": 0.5})
    log.close()
    assert log.tb is None and json.loads((tmp_path / "log.jsonl").read_text())["loss"] == 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # off: no warning
        RunLog(tmp_path, None, tensorboard=False).close()
    assert capsys.readouterr() == ("", "")  # the library prints nothing


def test_log_records_read_back_skipping_a_torn_line(tmp_path):
    from lvod.engine.runlog import RunLog, last_record, read_records

    assert read_records(tmp_path / "log.jsonl") == [] and last_record(tmp_path / "log.jsonl") == {}
    log = RunLog(tmp_path, None, tensorboard=False)
    for record in ({"event": "start", "iter": 0}, {"event": "train", "iter": 1}, {"event": "train", "iter": 2}):
        log(record)
    log.close()
    with open(tmp_path / "log.jsonl", "a") as fh:
        fh.write('{"event": "train", "it')  # a run mid-write
    assert [r["iter"] for r in read_records(tmp_path / "log.jsonl")] == [0, 1, 2]
    assert last_record(tmp_path / "log.jsonl") == {"event": "train", "iter": 2}
    assert last_record(tmp_path / "log.jsonl", "start") == {"event": "start", "iter": 0}
    RunLog(tmp_path, 1, tensorboard=False).close()  # a resume at 1 drops iter 2
    assert read_records(tmp_path / "log.jsonl") == [{"event": "start", "iter": 0}, {"event": "train", "iter": 1}]


def _ddp_worker(rank, world, port, run_dir, sources):
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        train(make_cfg(epochs=1), run_dir, model=fresh_model(), sources=sources)
        assert not dist.is_initialized()  # train joined the group, so it leaves it
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_two_process_ddp_trains_and_checkpoints(tmp_path, tiny_sources):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the workers share the parent's imports (spawn would re-import torch twice)
    ctx = torch.multiprocessing.start_processes(
        _ddp_worker, args=(2, port, tmp_path, tiny_sources), nprocs=2, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("2-process gloo training did not finish within 120 s")
    state = ckpt_io.load_checkpoint(tmp_path / "latest.pth")
    assert state["iter"] == 3 and state["epoch"] == 1  # 20 frames / (2 x 4)
    assert len(state["rng"]) == 2 and state["sampler"]["world_size"] == 2
    start = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[0])
    assert start["world_size"] == 2 and start["base_lr"] == pytest.approx(0.05 * 8 / 4)


def test_config_file_to_run_folder_with_real_detector_then_auto_resume(tmp_path, tiny_vid):
    """Config file -> run folder with the single-frame R18 detector (lvod.models.build_model),
    stopped after 1 iteration, then auto-resumed to the end of the epoch (3 iterations)."""
    root = tmp_path / "data"
    tiny_vid(root, num_videos=1, num_frames=3, size=(128, 96))
    cfg_path = tmp_path / "tiny_single.toml"
    cfg_path.write_text(f"""
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
tensorboard = false
log_interval = 1
amp = false
""")
    run = tmp_path / "run"
    cfg = load_config(cfg_path, ["train.stop_after_iters=1"])
    assert find_resume_checkpoint(run, False) is None  # nothing yet: fresh
    assert train(cfg, run) == {"iter": 1, "epoch": 0, "run_dir": str(run)}
    assert ckpt_io.load_checkpoint(run / "latest.pth")["iter"] == 1
    assert load_config(run / "config.resolved.json").train.stop_after_iters == 1
    ckpt = find_resume_checkpoint(run, False)  # auto-resume
    assert ckpt == run / "latest.pth"
    assert train(load_config(cfg_path), run, resume=ckpt) == {"iter": 3, "epoch": 1, "run_dir": str(run)}
    lines = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    assert [(r["event"], r["iter"]) for r in lines] == [
        ("start", 0),
        ("train", 1),
        ("resume_config_diff", 1),
        ("start", 1),
        ("train", 2),
        ("train", 3),
    ]
    assert lines[3]["resumed_from"] == str(ckpt)
    for r in (r for r in lines if r["event"] == "train"):
        terms = {k: v for k, v in r.items() if k.startswith("loss_")}
        assert set(terms) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox"}
        assert r["loss"] == pytest.approx(sum(terms.values())) and r["epoch"] == 1
    assert sorted(p.name for p in run.glob("*.pth")) == ["epoch_1.pth", "latest.pth"]
