"""The weights' moving average (``train.ema_decay``, ``lvod.engine.ema``): the update rule on
hand-computed numbers, and that what a checkpoint's user loads (``lvod test`` / ``infer`` /
``calibrate`` through ``load_model``, ``--init-from``) is the average unless asked otherwise.
The training loop's side (checkpointed, resumed exactly) is in ``test_train.py``."""

import tomllib
from dataclasses import replace

import pytest
import torch
from conftest import TINY_DETECTOR
from torch import nn

from lvod.config import Config, ModelConfig, TrainConfig, config_to_dict
from lvod.config import TestConfig as EngineTestConfig
from lvod.config import build as build_section
from lvod.engine import checkpointing as ckpt_io
from lvod.engine.ema import WeightEMA, ema_decay_at
from lvod.engine.inference import load_model
from lvod.engine.train import init_from_checkpoint
from lvod.models import build_model

TINY = TINY_DETECTOR.format(kind="single", num_classes=2, root=".", workers=1, img_scale="", extra="")
TINY_MODEL = build_section(ModelConfig, tomllib.loads(TINY)["model"])


def test_the_decay_ramps_up_to_its_value():
    assert ema_decay_at(1, 0.995) == pytest.approx(2 / 11)
    assert ema_decay_at(9, 0.995) == pytest.approx(10 / 19)
    assert ema_decay_at(10_000, 0.995) == 0.995  # (1 + t) / (10 + t) reaches 0.995 at t = 1790
    assert ema_decay_at(1789, 0.995) < 0.995 and ema_decay_at(1791, 0.995) == 0.995
    with pytest.raises(ValueError, match="ema_decay"):
        WeightEMA(nn.Linear(1, 1), 1.0)
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=-0.1)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 1)
        self.frozen = nn.Parameter(torch.tensor([1.0]), requires_grad=False)
        self.register_buffer("count", torch.tensor([0.0]))


def test_trainable_weights_are_averaged_and_everything_else_copied():
    net = Net()
    with torch.no_grad():
        net.fc.weight.copy_(torch.tensor([[1.0, 2.0]]))
        net.fc.bias.fill_(0.0)
    ema = WeightEMA(net, decay=0.5)
    with torch.no_grad():  # one optimiser step's worth of change
        net.fc.weight.copy_(torch.tensor([[3.0, -2.0]]))
        net.fc.bias.fill_(1.0)
        net.frozen.fill_(5.0)
        net.count.fill_(7.0)
    ema.update(net)  # d = min(0.5, 2/11) = 2/11
    d = 2 / 11
    assert torch.allclose(ema.weights["fc.weight"], torch.tensor([[d * 1 + (1 - d) * 3, d * 2 + (1 - d) * -2]]))
    assert ema.weights["fc.bias"].item() == pytest.approx(1 - d)
    assert ema.weights["frozen"].item() == 5.0 and ema.weights["count"].item() == 7.0  # copied
    ema.update(net)  # d = min(0.5, 3/12) = 0.25, towards the same weights
    assert ema.weights["fc.bias"].item() == pytest.approx(0.25 * (1 - d) + 0.75 * 1.0)
    assert ema.updates == 2
    again = WeightEMA(net, decay=0.5)
    again.load_state_dict(ema.state_dict())
    assert again.updates == 2 and all(torch.equal(again.weights[k], v) for k, v in ema.weights.items())
    assert net.fc.bias.item() == 1.0  # the model's own weights are never touched


def build(seed):
    torch.manual_seed(seed)
    return build_model(TINY_MODEL, [1, 2])


@pytest.fixture(scope="module")
def ema_checkpoint(tmp_path_factory):
    """A checkpoint whose raw weights (seed 0) and moving average (seed 1) differ."""
    raw, avg = build(0).state_dict(), build(1).state_dict()
    path = tmp_path_factory.mktemp("ema") / "latest.pth"
    config = config_to_dict(Config(name="ema_src", model=TINY_MODEL))
    ema = {"decay": 0.995, "updates": 10, "weights": avg}
    ckpt_io.save_checkpoint({"model": raw, "ema": ema, "iter": 10, "epoch": 1, "config": config}, path)
    return path, raw, avg


def same(model, weights) -> bool:
    return all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


def test_test_and_infer_load_the_average_unless_told_otherwise(ema_checkpoint, one_thread):
    path, raw, avg = ema_checkpoint
    cfg = Config(name="ema_src", model=TINY_MODEL)
    model, ckpt = load_model(cfg, path, cat_ids=[1, 2])
    assert ckpt_io.has_ema(ckpt) and same(model, avg) and not same(model, raw)
    model, _ = load_model(replace(cfg, test=replace(EngineTestConfig(), use_ema=False)), path, cat_ids=[1, 2])
    assert same(model, raw)
    plain = {k: v for k, v in ckpt.items() if k != "ema"}  # a run trained without the average
    assert not ckpt_io.has_ema(plain) and ckpt_io.state_dict_of(plain) is plain["model"]


def test_init_from_starts_from_the_average_and_says_so(ema_checkpoint, one_thread):
    path, raw, avg = ema_checkpoint
    model = build(2)
    record = init_from_checkpoint(model, path)
    assert same(model, avg) and record["weights"] == "ema"
