"""Every long-tail method of the README's method table, end to end through the commands, on
every detector kind (single-frame, FGFA, SELSA): the sigmoid heads (EQLv2, federated loss)
with the two samplers (repeat factor, class balanced), cRT from a trained run
(``--init-from``), post-hoc calibration and Seq-NMS at test time. Tiny detectors, a few
iterations on one thread: this checks that the parts compose, the unit tests check the
maths."""

import json

import numpy as np
import pytest
import torch

from lvod.cli import main
from lvod.engine import checkpointing as ckpt_io
from lvod.evaluation import load_results

EXTRA = """rpn_allowed_border = -1.0
anchor_base = 4.0
flownet_width = 0.0625
selsa_test_refs = 2
"""
DATA = [  # the split files and frame size, for training and testing; every score kept at test
    # time (a few iterations teach these detectors little: the check is that the parts compose)
    "model.test_score_thr=0.0",
    'data.train=[{ann_file = "vid.json", load_as_video = true, key_frames_only = true}]',
    'data.val={ann_file = "vid.json", load_as_video = true, key_frames_only = false}',
    "data.img_scale=[64, 48]",
]
COMMON = [
    *DATA,
    "data.imgs_per_gpu=2",
    "data.workers_per_gpu=0",
    "data.num_ref_frames=2",
    "data.ref_frame_range=[-2, 2]",
    "train.epochs=1",
    "train.lr=0.01",
    "train.lr_base_batch=2",
    "train.warmup_iters=1",
    "train.progress_bar=false",
    "train.tensorboard=false",
]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory, tiny_vid):
    """2 videos of 12 frames at 64 x 48 (key frames 0, 3, 6, 9), both classes, and their
    frequency groups (the federated loss reads its counts from them)."""
    root = tmp_path_factory.mktemp("matrix")
    tiny_vid(root, num_videos=2, num_frames=12, size=(64, 48))
    assert (
        main(
            [
                "groups",
                str(root / "vid.json"),
                "--dataset",
                "matrix",
                "--method",
                "quantiles",
                "-k",
                "2",
                "--out",
                str(root / "groups.json"),
            ]
        )
        == 0
    )
    return root


def train_run(config, run, *extra):
    assert main(["train", str(config), "--work-dir", str(run), *COMMON, *extra]) == 0
    return run / "latest.pth"


def classifier_keys(state: dict) -> list[str]:
    return sorted(k for k in state if k.endswith("fc_cls.weight") or k.endswith("fc_cls.bias"))


@pytest.mark.parametrize("kind", ["single", "fgfa", "selsa"])
def test_every_method_runs_on_every_detector(kind, data_root, tmp_path, tiny_detector_config, one_thread, capsys):
    config = tiny_detector_config(
        tmp_path / f"{kind}.toml",
        kind=kind,
        root=data_root,
        num_classes=2,
        extra=EXTRA + f'groups_file = "{(data_root / "groups.json").as_posix()}"\n',
    )

    # training-time methods: each is one config value
    eqlv2 = train_run(config, tmp_path / "eqlv2", "model.head=eqlv2", "data.sampler=repeat_factor")
    fed = train_run(config, tmp_path / "fedloss", "model.head=fedloss", "data.sampler=class_balanced")
    # logits: EQLv2 keeps mmdet's layout (C classes, then an unused background one); the
    # federated loss has one per class, no background
    for ckpt, head, logits in ((eqlv2, "eqlv2", 3), (fed, "fedloss", 2)):
        state = ckpt_io.load_checkpoint(ckpt)
        assert state["config"]["model"]["head"] == head and state["iter"] > 0
        (w,) = [k for k in classifier_keys(state["model"]) if k.endswith("weight")]
        assert state["model"][w].shape[0] == logits
    (pos_grad,) = [v for k, v in ckpt_io.load_checkpoint(eqlv2)["model"].items() if k.endswith("pos_grad")]
    assert pos_grad.sum() > 0  # EQLv2's gradient statistics accumulated in every detector

    # decoupled: cRT from the EQLv2 run (a softmax classifier of another shape, re-initialised)
    crt = train_run(
        config,
        tmp_path / "crt",
        "--init-from",
        str(eqlv2),
        "data.sampler=class_balanced",
        "train.reinit_classifier=true",
        "train.freeze=all_but_classifier",
    )
    before, after = ckpt_io.load_checkpoint(eqlv2)["model"], ckpt_io.load_checkpoint(crt)["model"]
    cls = classifier_keys(after)
    kept = [k for k in after if k in before and k not in cls]
    assert len(kept) > 20 and all(torch.equal(after[k], before[k]) for k in kept)  # frozen: the EQLv2 run's
    assert all(not torch.equal(after[k], before[k]) for k in cls)  # the classifier: re-initialised, retrained
    capsys.readouterr()

    # post-hoc calibration and temporal rescoring at test time, on the cRT run
    plain = tmp_path / "plain" / "results.npz"
    tested = tmp_path / "calibrated" / "results.npz"
    base = ["test", str(config), "--checkpoint", str(crt), "--device", "cpu", *DATA]
    assert main([*base, "--out", str(plain)]) == 0
    assert main([*base, "--out", str(tested), "--calibrate", "norcal:gamma=1", "test.rescoring=seq_nms"]) == 0
    metrics = json.loads((tested.parent / "metrics.json").read_text())
    assert metrics["calibration"]["spec"] == "norcal:gamma=1" and metrics["rescoring"]["method"] == "seq_nms"
    a, b = load_results(plain), load_results(tested)
    assert len(a) and len(b) and not (len(a) == len(b) and np.allclose(np.sort(a.score), np.sort(b.score)))
    # and tau-normalisation on the sigmoid EQLv2 head
    out = tmp_path / "tau" / "results.npz"
    eqlv2_test = ["test", str(config), "--checkpoint", str(eqlv2), "--device", "cpu", *DATA, "model.head=eqlv2"]
    assert main([*eqlv2_test, "--out", str(out), "--calibrate", "tau_norm:tau=1"]) == 0
    assert json.loads((out.parent / "metrics.json").read_text())["calibration"]["spec"] == "tau_norm:tau=1"
