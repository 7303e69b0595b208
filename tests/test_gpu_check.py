"""benchmarks/gpu_check.py: its CPU mode (``--device cpu --tiny``) runs every section and
writes the report a GPU session will fill, so the script cannot rot between GPU loans;
its matching and clip helpers on hand-made inputs."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_script():
    """The script as a module (registered first: its dataclasses look their module up)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        sys.modules["gpu_check"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "report.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--threads", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_cpu_tiny_mode_runs_every_section_without_error(tiny_report):
    proc, report = tiny_report
    failed = {k: v.get("error") for k, v in report["sections"].items() if v.get("status") != "ok"}
    assert proc.returncode == 0 and not failed, (failed, proc.stdout[-3000:], proc.stderr[-2000:])
    assert list(report["sections"]) == ["env", "correctness", "train", "infer", "ddp"]
    assert report["mode"] == "tiny" and report["device"] == "cpu"
    assert report["reference"]["fgfa"] == {"fps": 6.9, "train_mem_gb": 4.1}
    assert "lvod GPU check" in proc.stdout and "training (key + 2 refs" in proc.stdout  # the printed table


def test_correctness_compares_every_detection(tiny_report):
    cases = tiny_report[1]["sections"]["correctness"]["cases"]
    assert set(cases) == {"fgfa", "selsa"}
    for c in cases.values():
        v = c["variants"]["fp32_repeat"]  # CPU against itself: the same numbers exactly
        assert v["frames"] == 2 and v["detections_ref"] == v["detections_other"] > 0
        assert v["matched_share"] == 1.0 and v["top10_found_share"] == 1.0
        assert v["max_score_diff"] == 0.0 and v["feature_max_rel_diff"] == 0.0
        assert [f["matched"] for f in v["per_frame"]] == [f["ref"] for f in v["per_frame"]]


def test_training_cases_time_steps_and_train_on_the_fixed_batch(tiny_report):
    cases = tiny_report[1]["sections"]["train"]["cases"]
    assert set(cases) == {f"{k}_{p}" for k in ("fgfa", "selsa") for p in ("fp32", "bf16", "fp16")}
    for name, c in cases.items():
        assert c["losses_finite"] and c["median_step_s"] > 0 and c["frames_per_step"] == 3
        assert c["peak_mem_gib"] is None and c["syncs_per_step"] is None  # CUDA-only measures
        if c["precision"] == "fp32":
            assert c["timed_steps"] == 3 and len(c["losses"]) == 4
            assert c["loss_decreased"], (name, c["losses"])  # 4 steps on one batch: it must learn
            assert c["step_tflop"] > 0 and c["achieved_tflops"] > 0
        else:
            assert c["timed_steps"] == 1
    assert cases["fgfa_fp16"]["scaler_scale"] in (65536.0, 32768.0)  # the grad scaler ran (and may have backed off)
    assert cases["fgfa_bf16"]["scaler_scale"] is None


def test_inference_cases_cover_every_detector_in_fp32_and_amp(tiny_report):
    cases = tiny_report[1]["sections"]["infer"]["cases"]
    kinds = ("fgfa", "selsa", "single", "dff", "temporal_roi_align")
    assert set(cases) == {f"{k}_{p}" for k in kinds for p in ("fp32", "amp")}
    for c in cases.values():
        assert c["first_frame_s"] > 0 and c["video_fps"] > 0 and c["detections_per_frame"] > 0
    fgfa = cases["fgfa_fp32"]
    assert fgfa["window"] == 5 and fgfa["frames"] == 7 and fgfa["steady_frames"] == 3  # frames 2..4: full window
    assert cases["selsa_amp"]["precision"] == "bfloat16" and cases["dff_fp32"]["key_frame_interval"] == 2


def test_ddp_section_trains_under_torchrun_then_resumes(tiny_report):
    steps = tiny_report[1]["sections"]["ddp"]["steps"]
    worker = steps["torchrun_lvod_train"]["checks"]
    assert worker["backend"] == "gloo" and worker["world_size"] == 1
    checks = worker["checks"]
    assert list(checks) == ["all_reduce_float64", "all_gather_object_rng", "ddp_steps", "lvod_train"]
    first = checks["lvod_train"]
    assert first["rc"] == 0 and first["checkpoint_iter"] == 2 and first["eqlv2_stats_dtype"] == "torch.float64"
    assert first["eqlv2_stats_sum"] > 0  # the statistics accumulated (all-reduced in the group)
    resume = steps["lvod_train_resume"]
    assert resume["checkpoint_iter"] == 3 and [s["iter"] for s in resume["log"]["starts"]] == [0, 2]


def test_match_detections_is_greedy_per_label_by_score():
    gc = load_script()
    a = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10]]),
        "scores": torch.tensor([0.9, 0.8, 0.3]),
        "labels": torch.tensor([1, 2, 3]),
    }
    b = {
        "boxes": torch.tensor([[1.0, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 31]]),
        "scores": torch.tensor([0.5, 0.85, 0.7]),
        "labels": torch.tensor([1, 1, 2]),
    }
    pairs = gc.match_detections(a, b)
    assert [(i, j) for i, j, _ in pairs] == [(0, 1), (1, 2)]  # label 3 has no partner; IoU 1.0 beats 0.82
    cmp = gc.compare_detections([a], [b])
    assert cmp["matched"] == 2 and cmp["matched_share"] == pytest.approx(2 / 3)
    assert cmp["max_score_diff"] == pytest.approx(0.1) and cmp["max_box_diff_px"] == pytest.approx(1.0)


def test_generated_clip_boxes_follow_the_painted_objects():
    gc = load_script()
    frames, targets = gc.make_clip(3, (60, 100), num_classes=5, seed=0)
    assert len(frames) == 3 and frames[0].shape == (3, 60, 100) and frames[0].dtype == torch.uint8
    for img, t in zip(frames, targets):
        b = t["boxes"]
        assert b.shape == (4, 4) and ((t["labels"] >= 1) & (t["labels"] <= 5)).all()
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= 100).all() and (b[:, 3] <= 60).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        x0, y0, x1, y1 = b[-1].int().tolist()  # painted last, so nothing covers it
        inside = img[:, y0:y1, x0:x1].float()  # horizontal stripes: each row is one colour
        assert inside.std(dim=2).max() == 0 and inside.std(dim=1).max() > 0
        outside = torch.ones(60, 100, dtype=torch.bool)
        for bx0, by0, bx1, by1 in b.int().tolist():
            outside[by0:by1, bx0:bx1] = False
        assert img[:, outside].float().std(dim=1).min() > 1  # background with noise
    assert not torch.equal(targets[0]["boxes"], targets[2]["boxes"])  # the objects move
