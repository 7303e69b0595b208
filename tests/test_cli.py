"""The command line: every subcommand has --help, and errors are reported, not raised."""

import subprocess
import sys

import pytest

from lvod.cli import build_parser, main
from lvod.notebooks import parse_value, resolve

SUBCOMMANDS = [
    ["data", "demo"],
    ["data", "convert-imagenet-vid"],
    ["data", "check"],
    ["data", "longtail-split"],
    ["compare"],
    ["stats"],
    ["groups"],
    ["train"],
    ["test"],
    ["infer"],
    ["eval"],
    ["calibrate"],
    ["notebooks", "run"],
    ["notebooks", "list"],
    ["demo-job"],
]


@pytest.mark.parametrize("cmd", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*cmd, "--help"])
    assert exc.value.code == 0
    assert "usage: lvod " + " ".join(cmd) in capsys.readouterr().out


def test_console_script_runs():
    out = subprocess.run([sys.executable, "-m", "lvod.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "demo-job" in out.stdout


def test_data_error_becomes_exit_code_1(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"images": [], "annotations": [{"id": 1}]}')
    assert main(["data", "check", str(bad)]) == 1
    captured = capsys.readouterr()
    assert "bad.json" in captured.out + captured.err


def test_notebook_parameter_values_parse_as_json_or_text():
    assert parse_value("3") == 3
    assert parse_value("[10, 100]") == [10, 100]
    assert parse_value("true") is True
    assert parse_value("data/demo/train.json") == "data/demo/train.json"


def test_unknown_notebook_lists_valid_names():
    with pytest.raises(FileNotFoundError, match="valid names"):
        resolve("99_nope")


class Called(Exception):
    """Raised by a stand-in library function once it has checked its arguments."""


def bind_library_calls(monkeypatch) -> list:
    """Replace every library function lvod.cli imports by one that binds the call to the
    real function's signature (a TypeError if they disagree), records it and stops the
    command; returns the list of ``(name, bound arguments)``."""
    import inspect

    from lvod import cli

    calls = []
    for name, fn in vars(cli).items():
        if inspect.isfunction(fn) and fn.__module__.startswith("lvod.") and fn.__module__ != "lvod.cli":

            def stand_in(*a, _fn=fn, _name=name, **k):
                calls.append((_name, inspect.signature(_fn).bind(*a, **k).arguments))
                raise Called(_name)

            monkeypatch.setattr(cli, name, stand_in)
    return calls


def test_overrides_may_follow_options(monkeypatch):
    calls = bind_library_calls(monkeypatch)
    with pytest.raises(Called):
        main(["train", "cfg.toml", "--work-dir", "w", "train.epochs=2", "data.root=/x"])
    assert calls == [("load_config", {"path": "cfg.toml", "overrides": ["train.epochs=2", "data.root=/x"]})]
    with pytest.raises(SystemExit):
        main(["train", "cfg.toml", "--no-such-flag"])


SAMPLE_ARGS = {
    "data demo": ["data", "demo", "--out", "d"],
    "data convert-imagenet-vid": ["data", "convert-imagenet-vid", "--root", "r", "--out", "o"],
    "data check": ["data", "check", "a.json", "--images", "i"],
    "stats": ["stats", "a.json", "--out", "o"],
    "groups": ["groups", "a.json", "--dataset", "demo", "--edges", "10,100"],
    "groups --from-bags": ["groups", "--from-bags", "bags", "--dataset", "demo"],
    "train": ["train", "c.toml", "--gpus", "2", "--resume", "train.lr=0.1"],
    "test": ["test", "c.toml", "--checkpoint", "x.pth", "--eval", "bbox", "--out", "r.json", "data.root=/x"],
    "infer": ["infer", "c.toml", "v.mp4", "--out", "o", "--random-weights", "--draw"],
    "eval": [
        "eval",
        "--ann",
        "gt.json",
        "--results",
        "r.npz",
        "--groups",
        "g.json",
        "--out",
        "m.json",
        "--backend",
        "pycocotools",
    ],
    "eval --bootstrap": ["eval", "--ann", "gt.json", "--results", "r.npz", "--bootstrap", "50", "--ap-fixed"],
    "test --bootstrap": ["test", "c.toml", "--checkpoint", "x.pth", "--bootstrap", "--bootstrap-seed", "3"],
    "data longtail-split": ["data", "longtail-split", "t.json", "--ratio", "50", "--det", "d.json", "--out", "o"],
    "compare": ["compare", "a=r1,r2", "b=r3", "--ann", "gt.json", "--baseline", "a", "--bootstrap", "10", "--out", "o"],
    "notebooks run": ["notebooks", "run", "01", "-p", "k", "3"],
    "notebooks list": ["notebooks", "list"],
    "demo-job": ["demo-job", "--quick"],
}


def _real_config_and_run_dir(monkeypatch):
    from lvod import cli
    from lvod.config import Config
    from lvod.engine.train import default_run_dir

    monkeypatch.setattr(cli, "load_config", lambda path, overrides=(): Config(name="c"))
    monkeypatch.setattr(cli, "default_run_dir", default_run_dir)
    monkeypatch.delenv("LOCAL_RANK", raising=False)


@pytest.mark.parametrize("name", SAMPLE_ARGS)
def test_every_subcommand_calls_a_function_that_accepts_its_arguments(name, monkeypatch):
    calls = bind_library_calls(monkeypatch)
    if name == "train":  # get past the config file and the run folder to the launch
        _real_config_and_run_dir(monkeypatch)
    with pytest.raises(Called):
        main(SAMPLE_ARGS[name])
    assert len(calls) == 1


def test_the_cli_imports_the_library_plainly():
    """No module-name strings: every library function the CLI calls is a plain import."""
    import ast
    from pathlib import Path

    from lvod import cli

    tree = ast.parse(Path(cli.__file__).read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert "importlib" not in names
    assert all(n.col_offset == 0 for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))


def test_test_command_keeps_overrides_apart_from_eval(monkeypatch):
    calls = bind_library_calls(monkeypatch)
    with pytest.raises(Called):
        main(SAMPLE_ARGS["test"])
    ((_, kwargs),) = calls
    assert kwargs["eval"] == ("bbox",) and kwargs["overrides"] == ["data.root=/x"]


def test_train_resume_flags_reach_the_launch(monkeypatch):
    from lvod import cli

    calls = bind_library_calls(monkeypatch)
    _real_config_and_run_dir(monkeypatch)
    with pytest.raises(Called):
        main(["train", "c.toml", "--gpus", "2", "--resume-from", "x/iter_4.pth"])
    assert calls[-1] == (
        "torchrun_command",
        {
            "config_path": "c.toml",
            "run_dir": cli.Path("work_dirs/c"),
            "gpus": 2,
            "resume": "x/iter_4.pth",
            "overrides": [],
        },
    )
    with pytest.raises(Called):
        main(["train", "c.toml", "--work-dir", "w", "--resume"])  # one GPU: the checkpoint is looked up
    assert calls[-1] == ("find_resume_checkpoint", {"run_dir": cli.Path("w"), "resume": True})
    with pytest.raises(SystemExit) as exc:
        main(["train", "c.toml", "--resume", "--resume-from", "x.pth"])
    assert exc.value.code == 2


def test_non_finite_loss_is_exit_code_3(monkeypatch, capsys):
    from lvod import cli
    from lvod.config import Config
    from lvod.engine.train import NonFiniteLossError

    def diverge(cfg, run_dir, **kw):
        raise NonFiniteLossError("iteration 7: loss 'loss_cls' is nan")

    monkeypatch.setattr(cli, "load_config", lambda path, overrides=(): Config(name="c"))
    monkeypatch.setattr(cli, "find_resume_checkpoint", lambda run_dir, resume: None)
    monkeypatch.setattr(cli, "train", diverge)
    assert main(["train", "c.toml", "--work-dir", "w"]) == 3
    assert "iteration 7: loss 'loss_cls' is nan" in capsys.readouterr().err


def test_usage_errors_are_exit_code_2_and_bad_input_exit_code_1(tmp_path, capsys):
    assert main(["data", "convert-imagenet-vid", "--root", "r", "--out", "o", "--splits", "test"]) == 2
    assert "--splits 'test'" in capsys.readouterr().err
    assert (
        main(["eval", "--ann", "gt.json", "--results", "r.npz", "--protocol", "ilsvrc", "--backend", "pycocotools"])
        == 2
    )
    assert "no 'ilsvrc' protocol" in capsys.readouterr().err
    assert main(["stats", str(tmp_path / "missing.json"), "--out", str(tmp_path / "o")]) == 1
    assert "missing.json" in capsys.readouterr().err
    assert main(["eval", "--ann", str(tmp_path / "missing.json"), "--results", "r.npz"]) == 1
    assert not (tmp_path / "o").exists()


def test_convert_imagenet_vid_reports_a_missing_tree(tmp_path, capsys):
    code = main(
        [
            "data",
            "convert-imagenet-vid",
            "--root",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "o"),
            "--splits",
            "val",
        ]
    )
    assert code == 1
    assert "none" in capsys.readouterr().err


def test_lvod_test_reads_each_group_table_once_and_prints_the_tables(
    tmp_path, tiny_vid, tiny_detector_config, one_thread, monkeypatch, capsys
):
    """A BAGS detector is built with the config's table and scored per group with --groups:
    each file is read once, the returned metrics are what metrics.json holds."""
    import json
    import shutil

    from lvod import bags_io
    from lvod.config import load_config
    from lvod.engine.checkpointing import save_checkpoint
    from lvod.engine.inference import load_model
    from lvod.engine.test import test_model
    from lvod.groups import build_groups

    vid, _ = tiny_vid(tmp_path / "data", num_videos=2, num_frames=4)
    shutil.copy(vid, tmp_path / "data" / "ann.json")
    model_groups = bags_io.save_groups(
        build_groups([1, 2], [30, 5], method="edges", edges=[10]), tmp_path / "model_groups.json"
    )
    eval_groups = bags_io.save_groups(
        build_groups([1, 2], [30, 5], method="edges", edges=[100]), tmp_path / "eval_groups.json"
    )
    cfg = tiny_detector_config(
        tmp_path / "bags.toml",
        kind="single",
        root=tmp_path / "data",
        img_scale=(64, 48),
        extra=f'head = "bags"\ngroups_file = "{model_groups.as_posix()}"\n',
    )
    model, _ = load_model(load_config(cfg), None, random_weights=True, cat_ids=[1, 2])
    ckpt = save_checkpoint({"model": model.state_dict()}, tmp_path / "run" / "latest.pth")

    reads = []
    real = bags_io.load_groups
    monkeypatch.setattr(bags_io, "load_groups", lambda path: reads.append(str(path)) or real(path))
    m = test_model(cfg, ckpt, out=tmp_path / "out" / "results.json", groups=eval_groups, device="cpu", progress=False)
    assert sorted(reads) == sorted([str(model_groups), str(eval_groups)])
    assert [(g["group"], g["bin"]) for g in m["groups"]] == [("g1", "[0, 100)")]  # the --groups table, one bin
    written = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert written["groups"] == m["groups"] and written["inference"]["frames"] == 8 == m["inference"]["frames"]
    assert m["files"]["coco_json"] == tmp_path / "out" / "results.json" and m["note"] is None

    assert (
        main(
            ["test", str(cfg), "--checkpoint", str(ckpt), "--out", str(tmp_path / "out2" / "r.pkl"), "--device", "cpu"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "inference: 8 frames in 2 videos" in out and "does not write pickles" in out
    assert "| bbox_mAP_50 |" in out and "| g1 [0, 10) |" in out  # the config's table scores the groups
    assert not (tmp_path / "out2" / "r.pkl").exists() and (tmp_path / "out2" / "metrics.json").exists()


def test_train_seeds_makes_one_run_folder_per_seed(monkeypatch, tmp_path, capsys):
    from lvod import cli

    seen = []
    monkeypatch.setattr(
        cli, "train", lambda cfg, run_dir, resume=None: seen.append((cfg.train.seed, run_dir)) or {"iter": 1}
    )
    config = str(cli.Path(__file__).resolve().parents[1] / "configs" / "demo" / "fgfa_r18_demo_softmax.toml")
    assert main(["train", config, "--work-dir", str(tmp_path / "w"), "--seeds", "0,2", "train.epochs=1"]) == 0
    assert seen == [(0, tmp_path / "w" / "seed0"), (2, tmp_path / "w" / "seed2")]
    assert f"lvod compare fgfa_r18_demo_softmax={tmp_path / 'w' / 'seed0'},{tmp_path / 'w' / 'seed2'}" in (
        capsys.readouterr().out
    )
    assert main(["train", config, "--seeds", "0,0"]) == 2
    assert main(["train", config, "--side-by-side"]) == 2
    side = []
    monkeypatch.setattr(cli, "train_side_by_side", lambda runs, overrides: side.append((runs, overrides)))
    assert main(["train", config, "--work-dir", str(tmp_path / "s"), "--seeds", "1,3", "--side-by-side"]) == 0
    ((runs, overrides),) = side
    assert runs["seed3"] == (config, tmp_path / "s" / "seed3", ["train.seed=3"]) and overrides == []


def test_train_seeds_on_several_processes_launch_one_torchrun_per_seed(monkeypatch, tmp_path, capsys):
    from lvod import cli

    calls = []
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    config = str(cli.Path(__file__).resolve().parents[1] / "configs" / "demo" / "fgfa_r18_demo_softmax.toml")
    args = ["train", config, "--work-dir", str(tmp_path / "w"), "--gpus", "2", "--seeds", "0,1", "data.imgs_per_gpu=1"]
    assert main(args) == 0
    assert len(calls) == 2
    for seed, cmd in enumerate(calls):
        assert cmd[cmd.index("--nproc_per_node") + 1] == "2"
        assert cmd[cmd.index("--work-dir") + 1] == str(tmp_path / "w" / f"seed{seed}")
        assert "data.imgs_per_gpu=1" in cmd and f"train.seed={seed}" in cmd
    # a failed seed stops the loop with its exit code
    calls.clear()
    monkeypatch.setattr(cli.subprocess, "call", lambda cmd: calls.append(cmd) or 3)
    assert main(args) == 3 and len(calls) == 1
    assert "seed0: training failed (exit 3)" in capsys.readouterr().err
    assert main([*args, "--side-by-side"]) == 2
