"""Decoupled protocols (cRT, BAGS stage 2): ``train.init_from`` (weights only, a classifier
of another shape skipped, any other mismatch refused), ``train.reinit_classifier``,
``train.freeze``, the provenance a decoupled run keeps, its resume, and
``lvod train CONFIG --init-from CKPT``. Tiny single-frame detectors on one CPU thread."""

import hashlib
import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TINY_DETECTOR

from lvod.cli import main
from lvod.config import Config, DataConfig, ModelConfig, TrainConfig, config_to_dict
from lvod.config import build as build_section
from lvod.data.cocovid import load_cocovid
from lvod.engine import checkpointing as ckpt_io
from lvod.engine.train import config_fingerprint, init_from_checkpoint, plan_init_weights, train
from lvod.errors import DataError
from lvod.groups import build_groups
from lvod.models import build_model

PRED = "detector.roi_head.bbox_head.predictor."  # where the single-frame detector keeps its box predictor
EXTRA = "rpn_allowed_border = -1.0\nanchor_base = 4.0\n"  # small anchors, all kept: the frames are 64 x 48
TINY = TINY_DETECTOR.format(kind="single", num_classes=2, root=".", workers=1, img_scale="", extra=EXTRA)
TINY_MODEL = build_section(ModelConfig, tomllib.loads(TINY)["model"])
GROUPS = build_groups([1, 2], [100, 10], method="edges", edges=(50,))  # two object groups


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def model_cfg(head="softmax", **kw) -> ModelConfig:
    """The model of conftest's tiny detector config (R18, BatchNorm in eval, 64-wide FCs),
    the one the command-line test trains; ``kw`` replace fields."""
    return replace(TINY_MODEL, head=head, **kw)


def build(head="softmax", seed=0, **kw):
    torch.manual_seed(seed)
    cfg = model_cfg(head, **kw)
    return build_model(cfg, list(range(1, cfg.num_classes + 1)), groups=GROUPS if head == "bags" else None)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A softmax detector saved as an lvod training checkpoint: ``(path, state dict)``."""
    model = build(seed=0)
    path = tmp_path_factory.mktemp("src") / "latest.pth"
    config = config_to_dict(Config(name="softmax_src", model=model_cfg()))
    ckpt_io.save_checkpoint({"model": model.state_dict(), "iter": 7, "epoch": 1, "config": config}, path)
    return path, {k: v.clone() for k, v in model.state_dict().items()}


def fresh_cls(shape, seed):
    """What reset_classifier draws for fc_cls.weight with ``seed`` (mmdet's N(0, 0.01))."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.empty(shape).normal_(0.0, 0.01)


def test_init_from_loads_weights_and_reinitialises_the_classifier(source):
    path, src = source
    model = build(seed=1)
    assert not torch.equal(model.state_dict()[PRED + "fc_reg.weight"], src[PRED + "fc_reg.weight"])
    rec = init_from_checkpoint(model, path, reinit_classifier=True, seed=3)
    own = model.state_dict()
    for k, v in src.items():
        if "fc_cls" not in k:
            assert torch.equal(own[k], v), k
    assert torch.equal(own[PRED + "fc_cls.weight"], fresh_cls(src[PRED + "fc_cls.weight"].shape, 3))
    assert not own[PRED + "fc_cls.bias"].any()
    assert not torch.equal(own[PRED + "fc_cls.weight"], src[PRED + "fc_cls.weight"])
    config = ckpt_io.load_checkpoint(path)["config"]
    assert rec == {
        "path": str(path),
        "resolved": str(path.resolve()),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "name": "softmax_src",
        "config_fingerprint": config_fingerprint(config),
        "source_iter": 7,
        "head": "softmax",
        "loaded": len(src) - 2,  # all but fc_cls
        "shape_mismatch": [],
        "missing": [],
        "unexpected": [],
        "classifier": "re-initialised",
        "weights": "model",  # the source kept no moving average (train.ema_decay)
    }
    kept = build(seed=2)
    assert init_from_checkpoint(kept, path)["classifier"] == "loaded"  # no reinit: fc_cls loaded too
    assert all(torch.equal(kept.state_dict()[k], v) for k, v in src.items())


def test_softmax_to_bags_skips_the_classifier_with_a_log_line(source, caplog):
    path, src = source
    model = build("bags", seed=1)
    assert model.state_dict()[PRED + "fc_cls.weight"].shape[0] == 3 + 3  # (C + 1) + (G + 1) vs softmax's 3
    with caplog.at_level("INFO", logger="lvod.engine.train"):
        rec = init_from_checkpoint(model, path, reinit_classifier=True, seed=0)
    assert rec["shape_mismatch"] == [PRED + "fc_cls.weight", PRED + "fc_cls.bias"] and rec["loaded"] == len(src) - 2
    assert "classifier weights not loaded" in caplog.text and "fc_cls.weight shape [3, 64] -> [6, 64]" in caplog.text
    own = model.state_dict()
    assert torch.equal(own[PRED + "fc_reg.weight"], src[PRED + "fc_reg.weight"])  # box regression kept
    assert torch.equal(own[PRED + "fc_cls.weight"], fresh_cls((6, 64), 0))
    # without reinit the BAGS classifier keeps its fresh build
    assert init_from_checkpoint(build("bags", seed=1), path)["classifier"] == "fresh"


@pytest.mark.parametrize(
    ("change", "key", "why"),
    [
        ({"num_classes": 3}, "fc_reg.weight", r"shape \[8, 64\] in the file, \[12, 64\] in this model"),
        ({"fc_channels": 32}, "shared_fcs.0.weight", r"shape \[64, 1568\] in the file, \[32, 1568\]"),
        ({"kind": "fgfa"}, "motion.conv1.0.conv.weight", "in this model, not in the file; .*and 27 more"),
    ],
)
def test_a_mismatch_outside_the_classifier_is_refused(source, change, key, why):
    path, _ = source
    model = build(seed=1, **change)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DataError, match=f"latest.pth: model weights: .*{key}.*{why}") as err:
        init_from_checkpoint(model, path, reinit_classifier=True)
    assert "only the classifier (fc_cls) may differ" in str(err.value)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # nothing copied


@pytest.mark.parametrize("kind", ["fgfa", "selsa"])
def test_video_detectors_softmax_to_bags_step_moves_only_the_classifier(kind, tmp_path):
    from lvod.models.checkpoint import freeze_all_but_classifier

    small = {"kind": kind, "flownet_width": 1 / 16}
    src = build(seed=0, **small)
    path = tmp_path / "src.pth"
    ckpt_io.save_checkpoint({"model": src.state_dict()}, path)
    model = build("bags", seed=1, **small)
    rec = init_from_checkpoint(model, path, reinit_classifier=True)
    assert rec["shape_mismatch"] == [PRED + "fc_cls.weight", PRED + "fc_cls.bias"]
    assert freeze_all_but_classifier(model) == [PRED + "fc_cls.weight", PRED + "fc_cls.bias"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    torch.manual_seed(0)
    target = {"boxes": torch.tensor([[8.0, 10, 40, 42], [50, 20, 90, 50]]), "labels": torch.tensor([1, 2])}
    losses = model(torch.randn(1, 3, 3, 64, 96), [(64, 96)], [target])
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    opt.step()
    after = model.state_dict()
    changed = sorted(k for k in after if not torch.equal(after[k], before[k]))
    assert changed == [PRED + "fc_cls.bias", PRED + "fc_cls.weight"]


def test_plan_separates_classifier_state_from_the_rest():
    t = torch.zeros
    own = {"a.w": t(2), "p.fc_cls.weight": t(3, 2), "p.fc_reg.weight": t(4, 2), "p.cum_samples": t(3)}
    file = {"a.w": t(2), "p.fc_cls.weight": t(5, 2), "p.fc_reg.weight": t(4, 2), "p.old_buffer": t(1), "b": t(1)}
    plan = plan_init_weights(own, file, "p.")
    assert sorted(plan["load"]) == ["a.w", "p.fc_reg.weight"]
    assert (plan["shape_mismatch"], plan["missing"], plan["unexpected"]) == (
        ["p.fc_cls.weight"],
        ["p.cum_samples"],
        ["p.old_buffer"],
    )
    assert plan["refused"] == {"b": "in the file, not in this model"}


@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory, tiny_vid):
    root = tmp_path_factory.mktemp("decoupled_data")
    vid, _ = tiny_vid(root, num_videos=2, num_frames=12, size=(64, 48))
    return [(load_cocovid(vid, images_root=root), True, True)]  # 6 key frames, 3 per class


def crt_cfg(path, **train_kw) -> Config:
    data = replace(
        DataConfig(), img_scale=[64, 48], imgs_per_gpu=2, workers_per_gpu=0, num_ref_frames=0, sampler="class_balanced"
    )
    base = dict(
        lr=0.05,
        lr_base_batch=2,
        epochs=1,
        warmup_iters=1,
        amp=False,
        progress_bar=False,
        tensorboard=False,
        deterministic=True,
        log_interval=1,
        init_from=str(path),
        reinit_classifier=True,
        freeze="all_but_classifier",
    )
    return Config(name="crt", data=data, model=model_cfg(), train=replace(TrainConfig(), **{**base, **train_kw}))


def test_decoupled_training_moves_only_the_classifier_and_resumes_without_reinit(source, tiny_sources, tmp_path):
    path, src = source
    straight = train(crt_cfg(path, stop_after_iters=2), tmp_path / "a", model=build(seed=1), sources=tiny_sources)
    assert straight["iter"] == 2
    state = ckpt_io.load_checkpoint(tmp_path / "a" / "latest.pth")
    out = state["model"]
    for k, v in src.items():
        if "fc_cls" not in k:
            assert torch.equal(out[k], v), k  # frozen (BatchNorm statistics included)
    start = fresh_cls(out[PRED + "fc_cls.weight"].shape, 0)  # train.seed = 0
    assert not torch.equal(out[PRED + "fc_cls.weight"], start) and out[PRED + "fc_cls.bias"].any()
    assert len(state["optimizer"]["param_groups"][0]["params"]) == 2  # the optimiser holds fc_cls only
    rec = json.loads((tmp_path / "a" / "init_from.json").read_text())
    assert rec == state["init_from"] and rec["name"] == "softmax_src" and rec["classifier"] == "re-initialised"
    log = [json.loads(ln) for ln in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    start_rec = next(r for r in log if r["event"] == "start")
    assert (start_rec["sampler"], start_rec["epoch_samples"]) == ("class_balanced", 6)
    assert start_rec["trainable_params"] == 3 * 65  # fc_cls: 3 x 64 weights + 3 biases
    assert next(r for r in log if r["event"] == "freeze")["trainable"] == [PRED + "fc_cls.weight", PRED + "fc_cls.bias"]

    # the same run interrupted after one iteration, its source file gone, then resumed
    train(crt_cfg(path, stop_after_iters=1), tmp_path / "b", model=build(seed=1), sources=tiny_sources)
    gone = tmp_path / "moved.pth"
    path.rename(gone)
    try:
        resumed = train(
            crt_cfg(path, stop_after_iters=2),
            tmp_path / "b",
            model=build(seed=5),
            sources=tiny_sources,
            resume=tmp_path / "b" / "latest.pth",
        )
    finally:
        gone.rename(path)
    assert resumed["iter"] == 2
    again = ckpt_io.load_checkpoint(tmp_path / "b" / "latest.pth")
    assert again["init_from"] == rec
    for k, v in out.items():
        assert torch.equal(again["model"][k], v), k


def test_reinit_without_init_from_and_a_missing_source_are_refused(tmp_path):
    cfg = crt_cfg("")
    with pytest.raises(DataError, match="reinit_classifier: is true but train.init_from is empty"):
        train(cfg, tmp_path / "x", model=build())
    with pytest.raises(DataError, match="nope.pth: train.init_from: does not exist"):
        train(crt_cfg(tmp_path / "nope.pth"), tmp_path / "y", model=build())
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()  # refused before writing


def test_cli_train_init_from_then_resume(source, tiny_sources, tmp_path, tiny_detector_config, capsys):
    path, src = source
    root = Path(tiny_sources[0][0].path).parent
    config = tiny_detector_config(tmp_path / "crt.toml", kind="single", root=root, num_classes=2, extra=EXTRA)
    run = tmp_path / "run"
    overrides = [
        'data.train=[{ann_file = "vid.json"}]',
        "data.img_scale=[64, 48]",
        "data.imgs_per_gpu=2",
        "data.workers_per_gpu=0",
        "data.sampler=class_balanced",
        "train.reinit_classifier=true",
        "train.freeze=all_but_classifier",
        "train.epochs=1",
        "train.lr_base_batch=2",
        "train.warmup_iters=1",
        "train.amp=false",
        "train.progress_bar=false",
        "train.tensorboard=false",
    ]
    assert main(["train", str(config), "--work-dir", str(run), "--init-from", str(path), *overrides]) == 0
    assert "done: 3 iterations" in capsys.readouterr().out
    resolved = json.loads((run / "config.resolved.json").read_text())
    assert resolved["train"]["init_from"] == str(path) and resolved["data"]["sampler"] == "class_balanced"
    state = ckpt_io.load_checkpoint(run / "latest.pth")
    assert state["init_from"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert torch.equal(state["model"][PRED + "fc_reg.weight"], src[PRED + "fc_reg.weight"])
    # the same command with --resume and a longer schedule continues the run, not re-initialising
    longer = [o for o in overrides if o != "train.epochs=1"] + ["train.epochs=2"]
    assert main(["train", str(config), "--work-dir", str(run), "--init-from", str(path), "--resume", *longer]) == 0
    out = capsys.readouterr().out
    assert "resuming from" in out and "done: 6 iterations" in out
    assert ckpt_io.load_checkpoint(run / "latest.pth")["init_from"] == state["init_from"]
