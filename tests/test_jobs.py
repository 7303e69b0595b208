"""The main job end to end, in quick mode (tiny data, a few iterations): every step runs
and leaves its outputs; a smoke test of the chain, not of the numbers."""

import json
import re

import nbformat
import numpy as np
import pytest

from lvod.bags_io import load_groups
from lvod.jobs import run_demo_job, summary_markdown


def test_summary_shows_intervals_and_verdicts():
    row = {
        "method": "bags",
        "scope": "overall",
        "key": "bbox_mAP_50",
        "value": 0.6,
        "ci": [0.5, 0.7],
        "seed_std": None,
        "diff": 0.1,
        "diff_ci": [0.02, 0.18],
        "verdict": "better",
    }
    base = {**row, "method": "softmax", "value": 0.5, "ci": [0.4, 0.6], "diff": 0.0, "diff_ci": None, "verdict": None}
    group = {
        **row,
        "scope": "group",
        "key": "rare [0, 90)",
        "value": 0.1,
        "diff": -0.05,
        "diff_ci": [-0.2, 0.1],
        "verdict": "unclear",
    }
    comparison = {
        "baseline": "softmax",
        "resamples": 1000,
        "seed": 0,
        "level": 0.95,
        "methods": {"softmax": {"num_seeds": 1}, "bags": {"num_seeds": 1}},
        "rows": [base, row, group],
    }
    text = summary_markdown(comparison)
    assert "| bags | bbox_mAP_50 | 0.600 | [0.500, 0.700] | 1 | 0.100 | [0.020, 0.180] | better |" in text
    assert "| bags | group rare [0, 90) AP50 | 0.100 |" in text and "| unclear |" in text
    assert "1000 paired bootstrap resamples" in text and "parameters chosen on the held-out videos:" not in text
    calibration = {
        "metric": "bbox_mAP_50",
        "methods": {
            "tau_norm": {"param": "tau", "best": 0.0, "best_metric": 0.69, "identity_metric": 0.69},
            "norcal": {"param": "gamma", "best": 0.75, "best_metric": 0.6985, "identity_metric": 0.6901},
        },
    }
    text = summary_markdown(comparison, 60.0, calibration)
    assert "The job took 1.0 min." in text
    assert "tau_norm tau=0 (the identity: no grid value beat the uncalibrated detector)" in text
    assert "norcal gamma=0.75 (held-out bbox_mAP_50 0.699 vs 0.690 uncalibrated)" in text


def test_an_identity_calibration_reuses_the_baseline_detections(tmp_path):
    from lvod.evaluation import load_results
    from lvod.evaluation.results import Detections, save_results_npz
    from lvod.jobs import identity_calibration_run

    dets = Detections(np.array([1, 1, 2]), np.array([3, 4, 3]), np.ones((3, 4), np.float32), np.array([0.9, 0.5, 0.2]))
    source = save_results_npz(dets, tmp_path / "softmax" / "results.npz")
    groups = [{"group": "rare", "bin": "[0, 10)", "basis": "instances", "category_ids": "3", "num_classes_with_gt": 1}]
    baseline = {
        "bbox_mAP_50": 0.5,
        "classwise": [{"category_id": 3, "name": "c", "num_gt": 2, "ap50": 0.5, "ap": 0.2}],
        "groups": [{**groups[0], "ap50": 0.5, "ap": 0.2}],
        "inference": {"results": str(source), "checkpoint": "softmax/latest.pth"},
        "calibration": None,
        "files": {"results": source},
        "note": None,
    }
    chosen = {"param": "tau", "best": 0.0}
    m = identity_calibration_run(baseline, tmp_path / "softmax+tau_norm", "tau_norm", chosen, tmp_path / "softmax")
    saved = json.loads((tmp_path / "softmax+tau_norm" / "metrics.json").read_text())
    assert saved == {k: v for k, v in m.items() if k not in ("files", "note")}
    assert saved["bbox_mAP_50"] == 0.5 and saved["classwise"] == baseline["classwise"]
    assert saved["calibration"]["spec"] == "tau_norm:tau=0" and saved["calibration"]["identity"] is True
    assert saved["inference"]["results_from"] == str(source)
    assert saved["inference"]["results"] == str(tmp_path / "softmax+tau_norm" / "results.npz")
    again = load_results(m["files"]["results"])
    assert np.array_equal(again.score, dets.score) and np.array_equal(again.image_id, dets.image_id)
    assert baseline["inference"]["results"] == str(source)  # the baseline's record is not changed


@pytest.mark.slow
def test_quick_main_job_runs_every_step(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)  # the job writes relative to the working directory
    from lvod import jobs

    caplog.set_level("INFO", logger="lvod.jobs")
    # two training seeds (the same data; every method once per seed, compared over the seeds)
    r = run_demo_job("run", quick=True, train_seeds=(0, 1), end_to_end=("eqlv2",))
    run = tmp_path / "run"
    assert r["run_dir"] == jobs.Path("run") and r["report"] == jobs.Path("run/report/04_per_group_ap_analysis.html")
    assert (run / "data" / "annotations" / "heldout.json").exists()  # the data lives in the run folder
    assert load_groups(run / "groups.json").num_groups >= 1
    assert (run / "notebooks" / "01_dataset_statistics_and_grouping.html").exists()
    methods = ["softmax", "softmax+tau_norm", "softmax+logit_adjust", "softmax+norcal", "softmax+seq_nms"]
    methods += ["crt", "bags_stage2", "eqlv2"]  # eqlv2: the stretch row, trained end to end
    assert list(r["metrics"]) == methods and list(r["seeds"]) == [0, 1]
    for s, name in [(s, name) for s in (0, 1) for name in methods]:
        metrics = json.loads((run / f"seed{s}" / name / "metrics.json").read_text())
        returned = r["seeds"][s]["metrics"][name]
        assert metrics == {k: v for k, v in returned.items() if k not in ("files", "note")}
        assert returned["files"]["results"] == jobs.Path(f"run/seed{s}/{name}/results.npz")
        assert 0.0 <= metrics["bbox_mAP_50"] <= 1.0 and metrics["bbox_mAP_50_ci"] is not None
        assert len(metrics["classwise"]) == 12 and [g["group"] for g in metrics["groups"]] == [
            "rare",
            "common",
            "frequent",
        ]
    # calibrations: parameters chosen on the held-out videos (never trained on), then applied
    cal = json.loads((run / "seed0" / "softmax" / "calibration.json").read_text())
    assert cal["held_out"]["in_training"] is False and cal["held_out"]["source"].endswith("heldout.json")
    assert set(cal["methods"]) == {"tau_norm", "logit_adjust", "norcal"}
    for method, chosen in cal["methods"].items():
        applied = r["metrics"][f"softmax+{method}"]
        assert applied["calibration"]["method"] == method and applied["calibration"]["value"] == chosen["best"]
        if chosen["best"] == 0.0:  # the identity: the baseline's detections, reused
            assert applied["inference"]["results_from"] == r["metrics"]["softmax"]["inference"]["results"]
            assert applied["bbox_mAP_50"] == r["metrics"]["softmax"]["bbox_mAP_50"]
        else:
            assert "results_from" not in applied["inference"]
    # notebook 04 reused the job's comparison instead of evaluating every run again
    nb04 = nbformat.read(str(run / "report" / "04_per_group_ap_analysis.ipynb"), as_version=4)
    (injected,) = [c for c in nb04.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'comparison = "run/report/compare/compare.json"' in injected.source
    assert '"crt": ["run/seed0/crt", "run/seed1/crt"]' in injected.source  # each method's seeds
    assert r["metrics"]["softmax+seq_nms"]["rescoring"]
    # both cores: the baseline and the stretch row as two DDP processes sharing the recipe's batch of 2
    for s, name in [(s, name) for s in (0, 1) for name in ("softmax", "eqlv2")]:
        records = [json.loads(line) for line in (run / f"seed{s}" / name / "log.jsonl").read_text().splitlines()]
        (start,) = [rec for rec in records if rec.get("event") == "start"]
        assert (start["world_size"], start["total_batch"]) == (2, 2), name
        assert json.loads((run / f"seed{s}" / name / "config.resolved.json").read_text())["train"]["seed"] == s
    # only the checkpoints a user needs: the newest of each trained run
    for name in ("softmax", "crt", "bags_stage2", "eqlv2"):
        assert sorted(p.name for p in (run / "seed1" / name).glob("*.pth")) == ["epoch_1.pth", "latest.pth"], name
    init = json.loads((run / "seed1" / "crt" / "init_from.json").read_text())
    assert init["path"] == "run/seed1/softmax/latest.pth"  # each seed's decoupled runs: from that seed's baseline
    # the comparison takes every method over its two seeds
    for name in methods:
        assert r["comparison"]["methods"][name]["num_seeds"] == 2
        assert r["comparison"]["methods"][name]["runs"] == [f"run/seed{s}/{name}/results.npz" for s in (0, 1)]
    calibrations = {s: r["seeds"][s]["calibration"] for s in (0, 1)}
    assert r["summary"] == summary_markdown(r["comparison"], r["seconds"], calibrations)
    assert "Training seed 1. Calibration parameters chosen on the held-out videos: tau_norm tau=" in r["summary"]
    assert "Every value is the mean over 2 training seeds" in r["summary"]
    assert {row["method"] for row in r["comparison"]["rows"]} == set(methods)
    verdicts = {row["verdict"] for row in r["comparison"]["rows"] if row["method"] != "softmax"}
    assert verdicts <= {"better", "worse", "unclear"} and (run / "report" / "compare" / "compare.csv").is_file()
    report = nbformat.read(str(run / "report" / "04_per_group_ap_analysis.ipynb"), as_version=4)
    assert not any(o.get("output_type") == "error" for c in report.cells for o in c.get("outputs", []))
    for png in ("ap_vs_frequency", "groups", "gain_crt", "weight_norms", "frames", "differences"):
        assert (run / "report" / f"{png}.png").stat().st_size > 5_000
    assert "95% CI of diff" in (run / "report" / "summary.md").read_text()
    # one line per step with its elapsed time; training progress with iter/total and an ETA
    text = caplog.text
    assert "== 1. demo dataset (at 0s)" in text and "== 15. compare every method" in text and "done in" in text
    assert "== 3. seed 0: train the softmax FGFA baseline" in text and "== 9. seed 1: train the softmax" in text
    assert "== 14. seed 1: stretch row: the eqlv2 head trained end to end" in text
    assert re.search(r"softmax iter \d+/\d+ \(\d+%\) loss [0-9.]+ ETA", text)

    # notebooks 02 (train, live loss curve) and 03 (evaluate) on the same quick data
    from lvod.notebooks import NOTEBOOK_DIR, run_notebook

    data = ["data.root=run/data", "model.groups_file=run/groups.json"]  # shared by the seeds
    run_notebook(
        NOTEBOOK_DIR / "02_train.ipynb",
        run / "nb",
        {
            "config": jobs.BASELINE,
            "overrides": [*data, "train.epochs=1", "train.log_interval=2", "train.stop_after_iters=6"],
            "work_dir": "run/nb-train",
            "refresh_seconds": 1,
        },
    )
    assert (run / "nb-train" / "latest.pth").exists() and (run / "nb-train" / "log.jsonl").exists()
    run_notebook(
        NOTEBOOK_DIR / "03_evaluate.ipynb",
        run / "nb",
        {"config": jobs.BASELINE, "checkpoint": "run/nb-train/latest.pth", "overrides": data},
    )
    evaluated = nbformat.read(str(run / "nb" / "03_evaluate.ipynb"), as_version=4)
    shown = "".join(str(o.get("data", {}).get("text/plain", "")) for c in evaluated.cells for o in c.get("outputs", []))
    assert "bbox_mAP_50" in shown and "slow" in shown
    assert json.loads((run / "nb-train" / "metrics.json").read_text())["classwise"]


def test_per_rank_batch_splits_the_recipe_batch():
    from lvod import jobs

    assert jobs.per_rank_batch(jobs.BASELINE, [], 2) == 1
    assert jobs.per_rank_batch(jobs.BASELINE, ["data.imgs_per_gpu=4"], 2) == 2
    with pytest.raises(ValueError, match="imgs_per_gpu = 3 cannot be split evenly over 2 processes"):
        jobs.per_rank_batch(jobs.BASELINE, ["data.imgs_per_gpu=3"], 2)


def test_demo_job_refuses_an_unknown_end_to_end_head_before_running(tmp_path, capsys):
    from lvod.cli import main

    assert main(["demo-job", "--out", str(tmp_path / "run"), "--end-to-end", "eqlv2,nope"]) == 2
    assert "--end-to-end: unknown head 'nope'; use one of eqlv2, fedloss, bags" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_demo_job_refuses_repeated_training_seeds_before_running(tmp_path, capsys):
    from lvod.cli import main

    assert main(["demo-job", "--out", str(tmp_path / "run"), "--seeds", "0,1,0"]) == 2
    assert "give distinct seeds" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="training seeds must differ"):
        run_demo_job(tmp_path / "run", train_seeds=(1, 1))
    assert not (tmp_path / "run").exists()
