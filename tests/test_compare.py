"""lvod compare: paired bootstrap differences between runs, verdicts, seeds, refusals."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import make_eval_case

from lvod.cli import main
from lvod.errors import DataError
from lvod.evaluation import evaluate
from lvod.evaluation.compare import compare_methods, load_comparison, verdict
from lvod.evaluation.results import Detections, save_results_npz


def perfect(gt):
    return Detections(
        gt.img_ids[gt.ann_image_idx],
        gt.ann_cat_ids,
        gt.ann_boxes.astype(np.float32),
        np.linspace(1, 0.5, len(gt.ann_ids), dtype=np.float32),
    )


def evaluated(gt, dets, n=200, seed=0):
    return evaluate(gt, dets, bootstrap=n, seed=seed, keep_samples=True, groups={"a": [1, 2], "b": [3, 4]})


def rows_of(result, method):
    return {(r["scope"], r["key"]): r for r in result["rows"] if r["method"] == method}


def test_a_run_compared_with_itself_differs_by_exactly_zero():
    gt, dets = make_eval_case(seed=3)
    m = evaluated(gt, dets)
    result = compare_methods({"base": [m], "same": [evaluated(gt, dets)]}, "base")
    same = rows_of(result, "same")
    assert all(r["diff"] == 0.0 and r["diff_ci"] == [0.0, 0.0] for r in same.values() if r["value"] is not None)
    assert {r["verdict"] for r in same.values()} == {"unclear"}
    assert same[("overall", "bbox_mAP_50")]["ci"] == m["bbox_mAP_50_ci"]


def test_a_clearly_better_detector_is_better_and_the_worse_one_worse():
    gt, dets = make_eval_case(seed=3)
    result = compare_methods({"noisy": [evaluated(gt, dets)], "perfect": [evaluated(gt, perfect(gt))]}, "noisy")
    row = rows_of(result, "perfect")[("overall", "bbox_mAP_50")]
    assert row["verdict"] == "better" and row["diff"] > 0 and row["diff_ci"][0] > 0
    assert rows_of(result, "perfect")[("group", "a")]["verdict"] == "better"
    flipped = compare_methods({"noisy": [evaluated(gt, dets)], "perfect": [evaluated(gt, perfect(gt))]}, "perfect")
    assert rows_of(flipped, "noisy")[("overall", "bbox_mAP_50")]["verdict"] == "worse"


def test_seeds_are_aggregated_with_their_spread():
    gt, dets = make_eval_case(seed=3)
    rng = np.random.default_rng(0)
    jittered = Detections(dets.image_id, dets.category_id, dets.bbox + rng.normal(0, 2, dets.bbox.shape), dets.score)
    runs = [evaluated(gt, dets), evaluated(gt, jittered)]
    result = compare_methods({"base": [evaluated(gt, dets)], "two_seeds": runs}, "base")
    row = rows_of(result, "two_seeds")[("overall", "bbox_mAP_50")]
    values = [r["bbox_mAP_50"] for r in runs]
    assert row["value"] == pytest.approx(np.mean(values)) and row["seed_std"] == pytest.approx(np.std(values, ddof=1))
    assert (row["seed_min"], row["seed_max"]) == (min(values), max(values))
    assert result["methods"]["two_seeds"]["num_seeds"] == 2


def test_runs_on_other_ground_truth_or_resamples_are_refused():
    gt, dets = make_eval_case(seed=3)
    gt2, dets2 = make_eval_case(seed=4)
    with pytest.raises(DataError, match="ground truth"):
        compare_methods({"a": [evaluated(gt, dets)], "b": [evaluated(gt2, dets2)]}, "a")
    with pytest.raises(DataError, match="ground truth / resamples"):
        compare_methods({"a": [evaluated(gt, dets, n=100)], "b": [evaluated(gt, dets, n=200)]}, "a")
    with pytest.raises(DataError, match="baseline"):
        compare_methods({"a": [evaluated(gt, dets)]}, "zzz")


def test_verdict_reads_the_interval():
    assert verdict([0.01, 0.2]) == "better" and verdict([-0.2, -0.01]) == "worse"
    assert verdict([-0.1, 0.1]) == "unclear" and verdict(None) == "unclear"


def test_lvod_compare_command(demo_data, tmp_path, capsys):
    """End to end on the demo val split: two run folders with results.npz."""
    from lvod.data.cocovid import load_cocovid

    gt = load_cocovid(demo_data["val_json"])
    rng = np.random.default_rng(0)
    good = perfect(gt)
    bad = Detections(good.image_id, good.category_id, good.bbox + rng.normal(0, 6, good.bbox.shape), good.score)
    for name, d in (("good", good), ("bad", bad)):
        (tmp_path / name).mkdir()
        save_results_npz(d, tmp_path / name / "results.npz")
    code = main(
        [
            "compare",
            f"bad={tmp_path / 'bad'}",
            f"good={tmp_path / 'good'}",
            "--ann",
            str(demo_data["val_json"]),
            "--baseline",
            "bad",
            "--bootstrap",
            "100",
            "--groups",
            str(Path(__file__).resolve().parents[1] / "intermediate_files" / "demo" / "groups.json"),
            "--out",
            str(tmp_path / "cmp"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| good | bbox_mAP_50 |" in printed and "better" in printed
    # groups by their readable name and count bin, with the basis named once
    assert "| good | group rare [0, 90) AP50 |" in printed and "| good | group frequent [246, inf) AP50 |" in printed
    assert "Frequency groups by training instances per class." in printed
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["baseline"] == "bad" and saved["resamples"] == 100
    assert saved["methods"]["good"]["runs"] == [str(tmp_path / "good" / "results.npz")]  # it names the runs
    # a report reuses it only for exactly these runs, baseline and resamples
    runs = {"bad": [tmp_path / "bad"], "good": [tmp_path / "good" / "results.npz"]}
    assert load_comparison(tmp_path / "cmp" / "compare.json", runs, baseline="bad", bootstrap=100) == saved
    for wrong, kw, where in (
        ({"bad": runs["bad"], "good": runs["bad"]}, {"baseline": "bad"}, "methods.good.runs"),
        ({"bad": runs["bad"]}, {"baseline": "bad"}, "methods.good.runs"),
        (runs, {"baseline": "good"}, "baseline"),
        (runs, {"baseline": "bad", "bootstrap": 1000}, "resamples"),
    ):
        with pytest.raises(DataError, match=where):
            load_comparison(tmp_path / "cmp" / "compare.json", wrong, **kw)
    assert (tmp_path / "cmp" / "compare.csv").read_text().startswith("method,scope,key,value,ci_lo")
    # a run whose metrics.json names another ground truth is refused
    (tmp_path / "good" / "metrics.json").write_text(json.dumps({"ground_truth": {"file": "x", "fingerprint": "0"}}))
    assert (
        main(
            [
                "compare",
                f"bad={tmp_path / 'bad'}",
                f"good={tmp_path / 'good'}",
                "--ann",
                str(demo_data["val_json"]),
                "--baseline",
                "bad",
                "--out",
                str(tmp_path / "cmp2"),
            ]
        )
        == 1
    )
