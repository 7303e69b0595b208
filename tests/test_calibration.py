"""Post-hoc calibration: the transforms on hand-computed numbers, exact identities, the
heads each one refuses, the held-out split, and lvod calibrate -> lvod test --calibrate."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lvod.errors import DataError
from lvod.models.calibration import (
    Calibration,
    ScoreCalibrator,
    check_supported,
    logit_adjust,
    norcal,
    parse_calibration,
    tau_norm,
    tau_norm_factors,
    tau_norm_logits,
)
from lvod.models.heads import build_head

# ----------------------------------------------------------------------------- the maths


def test_tau_norm_by_hand():
    w = torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]])  # row 0 = background (norm 5)
    rows = torch.tensor([1, 2])
    literal = tau_norm(w, 1.0, rows, rescale=False)
    torch.testing.assert_close(literal, torch.tensor([[3.0, 4.0], [1.0, 0.0], [0.0, 1.0]]))
    half = tau_norm(w, 0.5, rows, rescale=False)
    torch.testing.assert_close(half[2], torch.tensor([0.0, math.sqrt(2)]))
    # rescale: times the geometric mean of the class norms (sqrt(1 * 2)) to the power tau
    r2 = math.sqrt(2)
    torch.testing.assert_close(tau_norm(w, 1.0, rows), torch.tensor([[3.0, 4.0], [r2, 0.0], [0.0, r2]]))
    assert torch.equal(tau_norm(w, 0.0, rows), w)
    assert torch.equal(tau_norm_factors(w, 0.0, rows), torch.ones(3))


def test_tau_norm_on_logits_equals_the_normalised_classifier():
    torch.manual_seed(0)
    head = build_head("softmax", 8, 3)
    with torch.no_grad():
        head.fc_cls.weight.mul_(torch.tensor([1.0, 4.0, 1.0, 0.25])[:, None] * 30)
        head.fc_cls.bias.normal_()
    x = torch.randn(5, 8)
    logits, _ = head(x)
    f = tau_norm_factors(head.fc_cls.weight, 0.7, torch.arange(1, 4))
    via_logits = tau_norm_logits(logits, head.fc_cls.bias, f)
    with torch.no_grad():
        head.fc_cls.weight.copy_(tau_norm(head.fc_cls.weight, 0.7, torch.arange(1, 4)))
    torch.testing.assert_close(via_logits, head(x)[0])
    assert f[0] == 1.0, "the background row is not normalised"


def test_logit_adjust_by_hand():
    z = torch.tensor([[0.0, 1.0, 2.0]])
    out = logit_adjust(z, torch.tensor([0.25, 0.75]), 1.0, torch.tensor([1, 2]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 1 - math.log(0.25), 2 - math.log(0.75)]]))
    assert logit_adjust(z, torch.tensor([0.25, 0.75]), 0.0, torch.tensor([1, 2])) is z


def test_norcal_by_hand():
    z = torch.log(torch.tensor([[2.0, 4.0, 9.0]]))  # exps 2 (background), 4, 9
    counts = torch.tensor([4.0, 9.0])
    torch.testing.assert_close(norcal(z, counts, 1.0), torch.tensor([[0.5, 0.25, 0.25]]))  # [2, 1, 1] / 4
    torch.testing.assert_close(norcal(z, counts, 0.5), torch.tensor([[2 / 7, 2 / 7, 3 / 7]]))  # [2, 2, 3] / 7
    assert torch.equal(norcal(z, counts, 0.0), torch.softmax(z, -1))
    no_bg = norcal(torch.log(torch.tensor([[4.0, 9.0]])), counts, 1.0, background=None)
    torch.testing.assert_close(no_bg, torch.tensor([[0.5, 0.5]]))


@pytest.mark.parametrize("head_name", ["softmax", "seesaw"])
@pytest.mark.parametrize("method", ["tau_norm", "logit_adjust", "norcal"])
def test_zero_leaves_scores_unchanged_exactly(head_name, method):
    torch.manual_seed(1)
    head = build_head(head_name, 8, 4)
    with torch.no_grad():
        head.fc_cls.weight.normal_()
        head.fc_cls.bias.normal_()
    logits = head(torch.randn(6, 8))[0]
    cal = ScoreCalibrator(
        head, parse_calibration(f"{method}:{'gamma' if method == 'norcal' else 'tau'}=0"), [5, 1, 50, 7]
    )
    assert torch.equal(cal(logits), head.scores(logits))
    moved = ScoreCalibrator(head, Calibration(method, 0.5), [5, 1, 50, 7])
    assert not torch.allclose(moved(logits), head.scores(logits))


def test_softmax_calibrator_applies_the_hand_computed_transforms():
    head = build_head("softmax", 2, 2)
    z = torch.log(torch.tensor([[2.0, 4.0, 9.0]]))
    torch.testing.assert_close(
        ScoreCalibrator(head, Calibration("norcal", 1.0), [4, 9])(z), norcal(z, torch.tensor([4.0, 9.0]), 1.0)
    )
    # logit adjustment = NorCal with every object logit raised by tau * log(sum n) = log 13
    la = ScoreCalibrator(head, Calibration("logit_adjust", 1.0), [4, 9])(z)
    e = torch.tensor([2.0, 4 / 4 * 13, 9 / 9 * 13])
    torch.testing.assert_close(la, (e / e.sum())[None])


def test_seesaw_norcal_renormalises_the_classes_and_keeps_the_background():
    torch.manual_seed(2)
    head = build_head("seesaw", 8, 3)
    with torch.no_grad():
        head.fc_cls.weight.normal_()
    logits = head(torch.randn(4, 8))[0]
    counts = [100, 10, 1]
    before, after = head.scores(logits), ScoreCalibrator(head, Calibration("norcal", 1.0), counts)(logits)
    torch.testing.assert_close(after[:, 0], before[:, 0])  # P(bg) from the objectness branch
    torch.testing.assert_close(after.sum(1), torch.ones(4))
    p_obj = 1 - before[:, :1]
    torch.testing.assert_close(
        after[:, 1:] / p_obj, norcal(logits[:, :3], torch.tensor(counts, dtype=torch.float), 1.0, background=None)
    )


def test_bags_tau_norm_touches_only_the_class_slots():
    from lvod.groups import build_groups

    table = build_groups([1, 2, 3, 4], [500, 400, 20, 10], method="edges", edges=[100])
    torch.manual_seed(3)
    head = build_head("bags", 8, 4, groups=table)
    with torch.no_grad():
        head.fc_cls.weight.normal_()
    cal = ScoreCalibrator(head, Calibration("tau_norm", 1.0))
    untouched = (cal.factors == 1).nonzero().flatten().tolist()
    slots = set(cal.columns.tolist())
    assert len(slots) == 4 and not slots & set(untouched)
    assert set(untouched) == set(range(head.num_logits)) - slots  # group 0 and the "others" slots
    logits = head(torch.randn(3, 8))[0]
    assert cal(logits).shape == (3, 5)


@pytest.mark.parametrize(
    "head,method,match",
    [
        ("bags", "norcal", "per-group softmaxes"),
        ("bags", "logit_adjust", "per-group softmaxes"),
        ("eqlv2", "norcal", "sigmoid head"),
        ("fedloss", "logit_adjust", "sigmoid head"),
        ("mystery", "tau_norm", "does not know the logit layout"),
    ],
)
def test_undefined_combinations_are_refused(head, method, match):
    with pytest.raises(DataError, match=match):
        check_supported(head, method)


def test_sigmoid_heads_take_tau_norm_and_keep_their_background_row():
    from lvod.models.heads import HEADS

    if "eqlv2" not in HEADS:
        pytest.skip("the eqlv2 head is not in this tree")
    torch.manual_seed(4)
    head = build_head("eqlv2", 8, 3)
    with torch.no_grad():
        head.fc_cls.weight.normal_()
    cal = ScoreCalibrator(head, Calibration("tau_norm", 1.0))
    assert cal.factors[3] == 1.0 and cal.columns.tolist() == [0, 1, 2]
    assert cal(head(torch.randn(2, 8))[0]).shape == (2, 4)
    with pytest.raises(DataError, match="sigmoid"):
        ScoreCalibrator(head, Calibration("norcal", 0.5), [1, 2, 3])


def test_parse_calibration():
    assert parse_calibration("none") is None and parse_calibration("") is None
    assert parse_calibration("auto") == Calibration(None)
    assert parse_calibration("norcal:auto") == Calibration("norcal", None)
    assert parse_calibration("logit_adjust").value == 1.0  # Menon et al.'s default
    c = parse_calibration("norcal:gamma=0.5,count=images")
    assert (c.method, c.value, c.count) == ("norcal", 0.5, "images") and c.spec() == "norcal:gamma=0.5,count=images"
    t = parse_calibration("tau_norm:tau=1,rescale=false")
    assert not t.rescale and parse_calibration(t.spec()) == t
    for bad, match in [
        ("norcal", "no published default"),
        ("platt:t=1", "unknown calibration"),
        ("norcal:tau=1", "takes gamma"),
        ("norcal:gamma=-1", ">= 0"),
        ("norcal:gamma=x", "not a number"),
        ("tau_norm:tau=1,count=images", "takes tau, rescale"),
    ]:
        with pytest.raises(DataError, match=match):
            parse_calibration(bad)


# ----------------------------------------------------------------------------- held-out split


def test_held_out_selection_is_seeded_stable_and_covers_classes():
    from lvod.engine.heldout import select_held_out

    names = [f"v{i:03d}" for i in range(50)]
    labels = [np.array([1, 2])] * 48 + [np.array([3])] * 2  # class 3 in two videos only
    a = select_held_out(names, labels, 0.2, seed=0)
    assert np.array_equal(a, select_held_out(names, labels, 0.2, seed=0))
    assert not np.array_equal(a, select_held_out(names, labels, 0.2, seed=1))
    plain = select_held_out(names, labels, 0.2, seed=0, cover_classes=False)
    assert len(plain) == 10
    assert any(3 in labels[i] for i in a)


def json_names(path) -> list[str]:
    return [im["file_name"] for im in json.loads(Path(path).read_text())["images"]]


def write_run(tmp_path, tiny_vid, kind="single", head="softmax"):
    """A run folder: 4 training videos, 2 val videos (another folder), a tiny detector with
    random weights saved as latest.pth, config.resolved.json."""
    from lvod.config import load_config, save_config
    from lvod.engine.checkpointing import save_checkpoint
    from lvod.engine.inference import load_model

    tiny_vid(tmp_path / "train", num_videos=4, num_frames=4, size=(64, 48))
    tiny_vid(tmp_path / "val", num_videos=2, num_frames=4, size=(64, 48))
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text(
        f"""
[model]
kind = "{kind}"
head = "{head}"
depth = 18
num_classes = 2
neck_channels = 32
rpn_channels = 32
fc_channels = 64
rpn_test_pre_nms = 100
rpn_test_post_nms = 20
test_max_dets = 10
fgfa_window = 3
selsa_test_refs = 2
[data]
root = "{tmp_path.as_posix()}"
img_scale = [64, 48]
train = [{{ ann_file = "train/vid.json", images_root = "train" }}]
val = {{ ann_file = "val/vid.json", images_root = "val" }}
[test]
workers = 0
"""
    )
    cfg = load_config(cfg_file)
    model, _ = load_model(cfg, None, random_weights=True)
    with torch.no_grad():
        model.detector.roi_head.predictor.fc_cls.weight.normal_(0, 0.5)
    run = tmp_path / "run"
    save_checkpoint({"model": model.state_dict()}, run / "latest.pth")
    save_config(cfg, run / "config.resolved.json")
    return run, cfg_file, cfg


def test_training_counts_count_key_frames_of_every_source(tmp_path, tiny_vid):
    from lvod.config import load_config
    from lvod.engine.calibrate import training_counts

    tiny_vid(tmp_path, num_videos=2, num_frames=12)  # 1 box a frame; key frames 0, 3, 6, 9; 5, 6 crowd
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(
        f'[data]\nroot = "{tmp_path.as_posix()}"\n'
        'train = [{ ann_file = "vid.json" }, { ann_file = "det.json", load_as_video = false }]\n'
    )
    counts, info = training_counts(load_config(cfg_file), [1, 2])
    assert counts.tolist() == [3, 3 + 2] and len(info["sources"]) == 2  # det.json: 2 images of class 2
    all_frames = load_config(cfg_file, ['data.train=[{ann_file="vid.json", key_frames_only=false}]'])
    assert training_counts(all_frames, [1, 2])[0].tolist() == [10, 10]
    assert training_counts(load_config(cfg_file), [1, 2], "images")[0].tolist() == [3, 5]


def test_held_out_split_never_overlaps_the_reported_split(tmp_path, tiny_vid):
    from lvod.config import load_config
    from lvod.engine.heldout import held_out_split

    run, cfg_file, cfg = write_run(tmp_path, tiny_vid)
    ds, _, info = held_out_split(cfg, tmp_path, fraction=0.5, seed=0)
    again, _, _ = held_out_split(cfg, tmp_path, fraction=0.5, seed=0)
    assert [v["name"] for v in info["videos"]] == [v["name"] for v in again.videos]
    assert 2 <= len(info["videos"]) < 4 and info["in_training"]
    val = {(tmp_path / "val" / n).resolve() for n in json_names(tmp_path / "val" / "vid.json")}
    assert val and not val & {(tmp_path / "train" / n).resolve() for n in ds.img_file_names}
    same = load_config(cfg_file, ['data.val={ann_file="train/vid.json", images_root="train"}'])
    with pytest.raises(DataError, match="are in the reported split"):
        held_out_split(same, tmp_path, fraction=0.5, seed=0)


# ----------------------------------------------------------------------------- end to end


def test_lvod_calibrate_writes_its_choice_and_lvod_test_uses_it(tmp_path, tiny_vid, capsys, one_thread):
    from lvod.cli import main

    run, cfg_file, _ = write_run(tmp_path, tiny_vid)
    argv = ["calibrate", str(run), "--method", "norcal,tau_norm", "--grid", "0.5,1", "--fraction", "0.5"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "| norcal | gamma | 0.5" in out and "wrote" in out
    data = json.loads((run / "calibration.json").read_text())
    assert set(data["methods"]) == {"norcal", "tau_norm"}
    assert [g["value"] for g in data["methods"]["norcal"]["grid"]] == [0.0, 0.5, 1.0]
    assert data["held_out"]["in_training"] and data["counts"]["values"] == [4, 4]  # 2 videos x 2 key frames
    best = data["methods"]["norcal"]["best"]

    res = tmp_path / "res" / "results.npz"
    args = ["test", str(cfg_file), "--checkpoint", str(run / "latest.pth"), "--out", str(res), "--device", "cpu"]
    assert main([*args, "--calibrate", "norcal:auto", "--rescoring", "seq_nms"]) == 0
    metrics = json.loads((res.parent / "metrics.json").read_text())
    cal = metrics["calibration"]
    assert (cal["method"], cal["value"], cal["from"]) == ("norcal", best, str(run / "calibration.json"))
    assert metrics["rescoring"]["method"] == "seq_nms" and metrics["rescoring"]["link_iou"] == 0.5
    assert f"calibration: norcal:gamma={best:g}" in capsys.readouterr().out

    # a calibration is chosen for one checkpoint file: another one is refused
    with torch.no_grad():
        sd = torch.load(run / "latest.pth", weights_only=True)
    sd["model"]["detector.roi_head.bbox_head.predictor.fc_cls.bias"] += 1
    torch.save(sd, run / "latest.pth")
    assert main([*args, "--calibrate", "auto"]) == 1
    assert "contents differ" in capsys.readouterr().err


def test_explicit_calibration_changes_scores_and_is_recorded(tmp_path, tiny_vid, one_thread):
    from lvod.engine.test import test_model
    from lvod.evaluation import load_results

    run, cfg_file, _ = write_run(tmp_path, tiny_vid)
    base = test_model(cfg_file, run / "latest.pth", out=tmp_path / "a.npz", device="cpu", progress=False)
    cal = test_model(
        cfg_file, run / "latest.pth", out=tmp_path / "b.npz", device="cpu", progress=False, calibrate="norcal:gamma=1"
    )
    assert base["calibration"] is None and base["rescoring"] == {"method": "none"}
    assert cal["calibration"]["spec"] == "norcal:gamma=1" and cal["calibration"]["counts_from"]
    a, b = load_results(tmp_path / "a.npz"), load_results(tmp_path / "b.npz")
    assert len(a) and not (len(a) == len(b) and np.allclose(a.score, b.score))
    with pytest.raises(DataError, match="test.calibrate"):
        test_model(
            cfg_file,
            run / "latest.pth",
            out=tmp_path / "c.npz",
            device="cpu",
            progress=False,
            overrides=["test.calibrate='norcal:gamma=oops'"],
        )


def test_bags_run_refuses_norcal_before_running(tmp_path, tiny_vid):
    from lvod.engine.calibrate import calibrate_run

    run, cfg_file, _ = write_run(tmp_path, tiny_vid)
    Path(cfg_file).write_text(Path(cfg_file).read_text().replace('head = "softmax"', 'head = "bags"'))
    with pytest.raises(DataError, match="not defined for the bags head"):
        calibrate_run(run, config=cfg_file, methods="norcal")
    assert not (run / "calibration.json").exists()


@pytest.mark.parametrize("kind", ["fgfa", "selsa"])
def test_one_pass_regrid_reproduces_every_video_detector(tmp_path, tiny_vid, kind, one_thread):
    """The grid re-scores the RoI head's tapped outputs; its identity value must give the
    detector's own detections on every frame (calibrate_run raises otherwise), for the
    video detectors' streaming orders too (FGFA's window, SELSA's references)."""
    from lvod.engine.calibrate import calibrate_run

    run, _, _ = write_run(tmp_path, tiny_vid, kind=kind)
    r = calibrate_run(run, methods="tau_norm", grid="1", fraction=0.25, progress=False)
    assert [g["value"] for g in r["methods"]["tau_norm"]["grid"]] == [0.0, 1.0]
    assert r["held_out"]["frames"] == 4 * len(r["held_out"]["videos"])


def test_clean_protocol_split_files_and_calibrating_on_a_file(tmp_path, tiny_vid, capsys, one_thread):
    """--write-split: held-out videos and the rest, disjoint, together the training file;
    a run trained on the rest calibrates on the held-out file as unseen data."""
    from lvod.cli import main
    from lvod.engine.calibrate import calibrate_run

    run, cfg_file, _ = write_run(tmp_path, tiny_vid)
    split = tmp_path / "split"
    assert main(["calibrate", str(cfg_file), "--write-split", str(split), "--fraction", "0.5"]) == 0
    held = json.loads((split / "held_out.json").read_text())
    rest = json.loads((split / "train_without_held_out.json").read_text())
    names = {v["name"] for v in held["videos"]}
    assert names and not names & {v["name"] for v in rest["videos"]}
    assert len(names) + len(rest["videos"]) == 4
    assert sorted(json_names(split / "held_out.json") + json_names(split / "train_without_held_out.json")) == sorted(
        json_names(tmp_path / "train" / "vid.json")
    )
    train_rest = (
        f'data.train=[{{ann_file="{(split / "train_without_held_out.json").as_posix()}", images_root="train"}}]'
    )
    r = calibrate_run(
        run,
        config=cfg_file,
        overrides=[train_rest],
        split=str(split / "held_out.json"),
        images_root=tmp_path / "train",
        methods="logit_adjust",
        grid="1",
        progress=False,
    )
    assert r["held_out"]["split"] == "file" and not r["held_out"]["in_training"]
    assert {v["name"] for v in r["held_out"]["videos"]} == names


def test_calibrate_has_help(capsys):
    from lvod.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["calibrate", "--help"])
    assert exc.value.code == 0 and "--write-split" in capsys.readouterr().out


def test_lvod_infer_calibrates_and_rescores(tmp_path, tiny_vid, one_thread):
    """lvod infer takes the same post-processing (the whole input is one video) and records
    it in the detections.json header; drawing still follows the rescored detections."""
    from lvod.engine.infer import infer_video

    run, cfg_file, _ = write_run(tmp_path, tiny_vid, kind="selsa")
    frames = tmp_path / "clip"
    frames.mkdir()
    for f in sorted((tmp_path / "val" / "vid").glob("v0_*.png")):
        (frames / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "out"
    r = infer_video(
        cfg_file,
        run / "latest.pth",
        frames,
        out,
        draw=True,
        score_thr=0.0,
        device="cpu",
        progress=False,
        calibrate="tau_norm:tau=1",
        rescoring="seq_nms",
    )
    head = json.loads((out / "detections.json").read_text())
    assert head["calibration"]["spec"] == "tau_norm:tau=1" and head["rescoring"]["method"] == "seq_nms"
    assert r["frames"] == 4 and len(head["frames"]) == 4 and len(list((out / "frames").iterdir())) == 4
    assert [f["index"] for f in head["frames"]] == [0, 1, 2, 3]
