"""Notebooks: committed clean, tagged parameters cell, and notebook 01 runs headless on demo data."""

import ast
import json

import nbformat
import pandas as pd
import pytest

from lvod.bags_io import load_groups
from lvod.notebooks import NotebookFailed, list_notebooks, run_notebooks

NOTEBOOKS = list_notebooks()


def test_all_four_notebooks_exist_in_order():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs_and_with_a_parameters_cell(path):
    nb = nbformat.read(str(path), as_version=4)
    assert nb.cells[0].cell_type == "markdown" and "lvod notebooks run" in nb.cells[0].source
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    # plain literals only: the cell must evaluate without importing anything
    namespace = {}
    exec(compile(tagged[0].source, "parameters", "exec"), {"__builtins__": {}}, namespace)
    assert namespace
    import papermill as pm

    assert set(pm.inspect_notebook(str(path))) == set(namespace), "papermill must see every parameter"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
            defs = [n for n in ast.walk(ast.parse(cell.source)) if isinstance(n, (ast.ClassDef, ast.FunctionDef))]
            assert not defs, "no class or function definitions in notebooks: they belong in lvod"


def test_notebook_01_runs_headless_on_demo_data(demo_data, tmp_path, capfd):
    run = tmp_path / "run"
    done = run_notebooks(
        "01",
        [("ann_file", str(demo_data["train_json"])), ("method", "quantiles"), ("k", "3"), ("basis", "images")],
        run_dir=str(run),
    )
    # the kernel's "running over TCP without encryption" warning is not shown at every run
    assert "without encryption" not in capfd.readouterr().err
    assert done == [
        {
            "ipynb": run / "01_dataset_statistics_and_grouping.ipynb",
            "html": run / "01_dataset_statistics_and_grouping.html",
        }
    ]
    assert (run / "01_dataset_statistics_and_grouping.ipynb").exists()
    assert (run / "01_dataset_statistics_and_grouping.html").stat().st_size > 10_000
    stats = pd.read_csv(run / "class_stats.csv")
    assert {"category_id", "name", "boxes", "tracks", "videos", "frames"} <= set(stats.columns)
    assert len(stats) == 12 and stats["boxes"].max() >= 50 * stats["boxes"].min()
    table = load_groups(run / "groups.json")
    assert table.num_groups == 3 and table.basis == "images"
    assert list(table.counts) == stats.sort_values("category_id")["key_frames"].tolist()
    for png in ("instances_per_class", "tracks_and_videos", "distributions"):
        assert (run / f"{png}.png").stat().st_size > 5_000
    executed = nbformat.read(str(run / "01_dataset_statistics_and_grouping.ipynb"), as_version=4)
    assert any(c.get("outputs") for c in executed.cells if c.cell_type == "code")
    assert json.loads((run / "summary.json").read_text())


def test_a_failing_cell_fails_the_command_and_keeps_the_notebook(tmp_path, capsys):
    from lvod.cli import main

    run = tmp_path / "run"
    with pytest.raises(NotebookFailed, match="failed in cell") as exc:
        run_notebooks("01", [("ann_file", str(tmp_path / "missing.json"))], run_dir=str(run))
    assert exc.value.ipynb == run / "01_dataset_statistics_and_grouping.ipynb" and exc.value.ipynb.exists()
    assert (
        main(
            [
                "notebooks",
                "run",
                "01",
                "-p",
                "ann_file",
                str(tmp_path / "missing.json"),
                "--run-dir",
                str(tmp_path / "run2"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "DataError" in err and "the executed notebook is kept for reading" in err


def test_unknown_parameter_is_refused(tmp_path, capsys):
    from lvod.cli import main

    with pytest.raises(ValueError, match=r"no parameter\(s\) \['no_such_param'\]"):
        run_notebooks("01", [("no_such_param", "1")], run_dir=str(tmp_path))
    assert main(["notebooks", "run", "01", "-p", "no_such_param", "1", "--run-dir", str(tmp_path)]) == 2
    assert "no_such_param" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_lvod_notebooks_list(capsys):
    from lvod.cli import main

    assert main(["notebooks", "list"]) == 0
    assert capsys.readouterr().out.split() == [p.stem for p in NOTEBOOKS]
