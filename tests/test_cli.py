"""The command line: every subcommand has --help, and errors are reported, not raised."""
import subprocess
import sys

import pytest

from lvod.cli import build_parser, main
from lvod.notebooks import parse_value, resolve

SUBCOMMANDS = [
    ["data", "demo"], ["data", "convert-imagenet-vid"], ["data", "check"], ["stats"], ["groups"],
    ["train"], ["test"], ["infer"], ["eval"], ["notebooks", "run"], ["notebooks", "list"], ["demo-job"],
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


def test_overrides_may_follow_options(monkeypatch):
    seen = {}
    monkeypatch.setattr("lvod.engine.train.train_main", lambda *a, **k: seen.update(k) or 0)
    assert main(["train", "cfg.toml", "--work-dir", "w", "train.epochs=2", "data.root=/x"]) == 0
    assert seen["overrides"] == ["train.epochs=2", "data.root=/x"] and seen["work_dir"] == "w"
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
    "eval": ["eval", "--ann", "gt.json", "--results", "r.npz", "--groups", "g.json", "--out", "m.json",
             "--backend", "pycocotools"],
    "notebooks run": ["notebooks", "run", "01", "-p", "k", "3"],
    "notebooks list": ["notebooks", "list"],
    "demo-job": ["demo-job", "--quick"],
}


@pytest.mark.parametrize("name", SAMPLE_ARGS)
def test_every_subcommand_calls_a_function_that_accepts_its_arguments(name, monkeypatch):
    import importlib
    import inspect

    calls = []
    monkeypatch.setattr("lvod.cli._call", lambda module, func, *a, **k: calls.append((module, func, a, k)) or 0)
    assert main(SAMPLE_ARGS[name]) == 0
    (module, func, args, kwargs), = calls
    inspect.signature(getattr(importlib.import_module(module), func)).bind(*args, **kwargs)


def test_test_command_keeps_overrides_apart_from_eval(monkeypatch):
    calls = []
    monkeypatch.setattr("lvod.cli._call", lambda module, func, *a, **k: calls.append(k) or 0)
    main(SAMPLE_ARGS["test"])
    assert calls[0]["eval"] == ("bbox",) and calls[0]["overrides"] == ["data.root=/x"]


def test_convert_imagenet_vid_reports_a_missing_tree(tmp_path, capsys):
    code = main(["data", "convert-imagenet-vid", "--root", str(tmp_path / "none"), "--out", str(tmp_path / "o"),
                 "--splits", "val"])
    assert code == 1
    assert "none" in capsys.readouterr().err
