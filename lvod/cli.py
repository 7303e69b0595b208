"""The ``lvod`` command line: one subcommand per job, each with ``--help``.

This module only parses arguments, calls the library function of the subcommand (imported
plainly below, so a reader can follow every command to its code), prints what it returned
and turns errors into exit codes, the same for every command:

- 0: success;
- 1: bad input (``lvod.errors.DataError``, naming file, record and fix), a missing file,
  a failing notebook cell, or ``lvod data check`` finding the file unusable;
- 2: a usage error (argparse's, or a bad combination of arguments);
- 3: training stopped on a NaN/inf loss (``lvod.engine.train.NonFiniteLossError``);
- 130: interrupted.

The library logs its progress through ``logging``; :func:`main` shows those lines on the
console.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

from lvod import __version__
from lvod.bags_io import counts_description, make_groups
from lvod.config import load_config
from lvod.data.cocovid import check_file
from lvod.data.demo import format_summary as format_demo_summary
from lvod.data.demo import make_demo
from lvod.data.imagenet_vid import LIST_FILES, convert_imagenet_vid, format_counts
from lvod.data.longtail import write_longtail_split
from lvod.engine.calibrate import calibrate_run
from lvod.engine.heldout import write_held_out_files
from lvod.engine.infer import infer_video
from lvod.engine.test import test_model
from lvod.engine.train import NonFiniteLossError, default_run_dir, find_resume_checkpoint, torchrun_command, train
from lvod.errors import DataError
from lvod.evaluation import evaluate_files, format_tables, write_metrics
from lvod.evaluation.compare import compare_runs, format_comparison
from lvod.evaluation.engine import check_backend
from lvod.groups import format_groups
from lvod.jobs import END_TO_END, run_demo_job, seed_runs, train_side_by_side
from lvod.notebooks import NotebookFailed, list_notebooks, run_notebooks
from lvod.stats import format_stats, write_stats


class UsageError(Exception):
    """Arguments that parse but do not go together: exit code 2, as argparse's errors."""


def _add_uncertainty(parser) -> None:
    """--bootstrap / --bootstrap-seed / --ap-fixed, shared by lvod eval and lvod test."""
    parser.add_argument(
        "--bootstrap",
        nargs="?",
        const="auto",
        default=0,
        metavar="N",
        help="95%% intervals from N resamples of the val videos (no N: 1000 under 10k frames, else 200)",
    )
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resamples (default 0)")
    parser.add_argument(
        "--ap-fixed",
        action="store_true",
        help="also report AP-fixed: no per-image cap, at most 10,000 detections per class (Dave et al. 2021)",
    )


def _add_postprocessing(parser) -> None:
    """--calibrate / --rescoring, shared by lvod test and lvod infer."""
    parser.add_argument(
        "--calibrate",
        default=None,
        metavar="NAME[:PARAM=VALUE]",
        help="post-hoc calibration before NMS: tau_norm:tau=T, logit_adjust:tau=T, norcal:gamma=G "
        "(options ,count=images ,rescale=false), NAME:auto or auto (the choice of lvod calibrate), "
        "none (default: the config's test.calibrate)",
    )
    parser.add_argument(
        "--rescoring",
        choices=("none", "seq_nms"),
        default=None,
        help="temporal rescoring of each video's detections (default: the config's test.rescoring; "
        "options test.seq_nms_link_iou, _rescore, _suppress, _suppress_iou)",
    )


def _postprocessing_line(r) -> str:
    c, s = r.get("calibration"), r.get("rescoring") or {"method": "none"}
    calib = "none" if not c or c.get("method") is None else c["spec"]
    if c and c.get("from"):
        calib += f" (auto, from {c['from']})"
    resc = "none" if s["method"] == "none" else f"seq_nms (link IoU {s['link_iou']}, {s['rescore']})"
    return f"calibration: {calib}; rescoring: {resc}"


def _bootstrap_arg(value):
    if value in (0, "auto"):
        return value
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--bootstrap {value!r}: give a number of resamples, e.g. --bootstrap 1000") from None
    if n < 1:
        raise UsageError(f"--bootstrap {n}: the number of resamples must be >= 1")
    return n


def _add_data(sub):
    p = sub.add_parser("data", help="build, convert and check datasets")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{demo,convert-imagenet-vid,check,longtail-split}")

    d = dsub.add_parser("demo", help="write the built-in synthetic long-tailed video dataset")
    d.add_argument("--out", required=True, help="output folder (frames + annotations/)")
    d.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    d.set_defaults(func=_data_demo)

    c = dsub.add_parser(
        "convert-imagenet-vid", help="convert the ILSVRC2015 XML tree + FGFA frame lists to CocoVID json"
    )
    c.add_argument("--root", required=True, help="the ILSVRC2015 folder (holds Annotations/ and Data/)")
    c.add_argument("--out", required=True, help="folder for imagenet_vid_{train,val}.json and the DET file")
    c.add_argument(
        "--lists",
        default=None,
        help="folder with VID_train_15frames.txt, VID_val_videos.txt, DET_train_30classes.txt "
        "(default: ROOT/ImageSets)",
    )
    c.add_argument("--splits", default="train,val,det", help="comma-separated subset of train,val,det")
    c.set_defaults(func=_data_convert)

    k = dsub.add_parser("check", help="validate an annotation file and print what was repaired or is fatal")
    k.add_argument("ann", help="CocoVID / COCO / TAO json")
    k.add_argument("--images", default=None, help="images root: also check that every frame file exists")
    k.set_defaults(func=_data_check)

    lt = dsub.add_parser(
        "longtail-split",
        help="a long-tailed subset of a CocoVID training file (whole videos, a seeded profile, published lists)",
    )
    lt.add_argument("train_json", help="the CocoVID training file (e.g. imagenet_vid_train.json)")
    lt.add_argument("--ratio", type=float, default=100.0, help="imbalance ratio, head videos / tail videos")
    lt.add_argument("--profile", choices=("exp", "pareto"), default="exp", help="per-class video counts by rank")
    lt.add_argument("--seed", type=int, default=0, help="the same seed gives byte-identical files")
    lt.add_argument("--det", default=None, help="a DET file (plain COCO) subsampled with the same profile")
    lt.add_argument("--out", required=True, help="folder for the subset json, kept lists, class table, split.json")
    lt.set_defaults(func=_data_longtail)


def _add_stats_groups(sub):
    s = sub.add_parser("stats", help="per-class dataset statistics (boxes, tracks, videos, frames, sizes)")
    s.add_argument("ann", help="annotation json")
    s.add_argument("--out", required=True, help="folder for class_stats.csv/.json and summary.json")
    s.set_defaults(func=_stats)

    g = sub.add_parser(
        "groups",
        help="build BAGS frequency-group tables from an annotation file or stats CSV, "
        "or import the reference BAGS files",
    )
    g.add_argument(
        "source",
        nargs="?",
        default=None,
        help="training annotation json, or a class_stats.csv (optional with --from-bags: gives "
        "the category ids, names and counts the imported table is checked against)",
    )
    g.add_argument("--dataset", required=True, help="dataset name: tables go to intermediate_files/<dataset>/")
    g.add_argument(
        "--method",
        choices=("edges", "quantiles", "log", "lvis"),
        default="quantiles",
        help="edges: explicit count edges (BAGS: 10,100,1000); quantiles: k groups of about "
        "equal class count; log: k log-spaced bins; lvis: LVIS's rare 1-10 / common 11-100 / "
        "frequent >100 training images",
    )
    g.add_argument(
        "--basis",
        choices=("instances", "images"),
        default=None,
        help="what to count per class: instances (non-crowd boxes) or images (training key frames "
        "holding the class); default images for --method lvis, else instances",
    )
    g.add_argument(
        "--edges", default=None, help="comma-separated count edges (of the --basis counts), e.g. 10,100,1000"
    )
    g.add_argument("-k", type=int, default=3, help="number of groups for quantiles/log (default 3)")
    g.add_argument(
        "--bags-dir",
        default=None,
        help="also write the BAGS reference files (label2binlabel.pt, pred_slice_with0.pt, "
        "valsplit.pkl) into this folder",
    )
    g.add_argument(
        "--from-bags",
        default=None,
        metavar="DIR",
        help="import the table from BAGS reference files in DIR (label2binlabel.pt, "
        "pred_slice_with0.pt, valsplit.pkl) instead of building it; --method/--edges/-k unused",
    )
    g.add_argument("--out", default=None, help="output json (default intermediate_files/<dataset>/groups.json)")
    g.set_defaults(func=_groups)


def _add_engine(sub):
    t = sub.add_parser("train", help="train a detector (one or many GPUs; CPU for the demo configs)")
    t.add_argument("config", help="config file under configs/")
    t.add_argument("--work-dir", default=None, help="run folder (default work_dirs/<config name>)")
    t.add_argument("--gpus", type=int, default=1, help="GPUs on this node; > 1 launches torchrun")
    nodes = t.add_argument_group(
        "several machines",
        "run the same command on every machine (tools/slurm_train.sh does it under SLURM); the run folder "
        "must be on a file system they all see. Static rendezvous: --nnodes N --node-rank R --master-addr HOST "
        "(node 0's address); c10d rendezvous: --nnodes N --rdzv-endpoint HOST:PORT (torchrun numbers the nodes)",
    )
    nodes.add_argument("--nnodes", type=int, default=None, help="number of machines (default 1)")
    nodes.add_argument("--node-rank", type=int, default=None, help="this machine's rank, 0..N-1 (static)")
    nodes.add_argument("--master-addr", default=None, metavar="HOST", help="node 0's address (static)")
    nodes.add_argument("--master-port", type=int, default=None, metavar="PORT", help="its port (static, default 29500)")
    nodes.add_argument(
        "--rdzv-endpoint",
        default=None,
        metavar="HOST[:PORT]",
        help="where the machines meet: with --node-rank node 0's address (static, port 29500), "
        "without it a c10d rendezvous (port 29400)",
    )
    nodes.add_argument(
        "--rdzv-id", default=None, metavar="ID", help="c10d rendezvous id (default lvod-<run folder name>)"
    )
    how = t.add_mutually_exclusive_group()
    how.add_argument("--resume", action="store_true", help="continue from the run folder's latest.pth")
    how.add_argument("--resume-from", default=None, metavar="CKPT", help="continue from this checkpoint")
    t.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="start from a trained run's weights (weights only, fresh optimiser, iteration 0): the decoupled "
        "protocols, e.g. configs/demo/fgfa_r18_demo_crt.toml --init-from RUN/latest.pth; = train.init_from=CKPT. "
        "A resume of the new run continues it and does not initialise again",
    )
    t.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,...",
        help="train once per seed (train.seed=S) into <run folder>/seed<S>, for lvod compare NAME=RUN/seed0,...",
    )
    t.add_argument(
        "--side-by-side",
        action="store_true",
        help="with --seeds: run the seeds at the same time, one CPU thread each (as the main job does)",
    )
    t.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    t.set_defaults(func=_train)

    e = sub.add_parser("test", help="run video inference on the config's test split and evaluate")
    e.add_argument("config")
    e.add_argument("--checkpoint", required=True)
    e.add_argument(
        "--eval",
        nargs="+",
        choices=("bbox",),
        default=["bbox"],
        help="metrics to evaluate (bbox, as the original test.py)",
    )
    e.add_argument("--no-eval", action="store_true", help="only write the results file")
    e.add_argument("--out", default=None, help="results file: .json (COCO results), .npz or .pkl")
    e.add_argument("--groups", default=None, help="groups.json for per-group AP (default: the config's)")
    e.add_argument("--device", default="auto")
    _add_postprocessing(e)
    _add_uncertainty(e)
    e.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    e.set_defaults(func=_test)

    i = sub.add_parser("infer", help="detect objects in your own video file or folder of frames")
    i.add_argument("config")
    i.add_argument("input", help="a video file (mp4, avi, ...) or a folder of frames")
    i.add_argument("--checkpoint", default=None)
    i.add_argument("--random-weights", action="store_true", help="allow running without a checkpoint")
    i.add_argument("--out", required=True, help="output folder")
    i.add_argument("--draw", action="store_true", help="also write frames with boxes drawn")
    i.add_argument("--video", action="store_true", help="also write a video with boxes drawn")
    i.add_argument(
        "--score-thr",
        type=float,
        default=0.3,
        help="draw boxes with at least this score (default 0.3); detections.json keeps every detection "
        "above the model's own threshold, model.test_score_thr",
    )
    i.add_argument("--max-frames", type=int, default=None)
    i.add_argument("--device", default="auto")
    _add_postprocessing(i)
    i.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    i.set_defaults(func=_infer)

    v = sub.add_parser("eval", help="evaluate detections (COCO AP@50 per class, group and motion speed)")
    v.add_argument("--ann", required=True, help="ground-truth annotation json")
    v.add_argument("--results", required=True, help="detections: COCO results .json or lvod .npz")
    v.add_argument("--groups", default=None, help="groups.json for per-group AP")
    v.add_argument("--out", default=None, help="metrics.json (CSV tables are written beside it)")
    v.add_argument(
        "--protocol",
        choices=("coco", "ilsvrc", "lvis"),
        default="coco",
        help="coco: AP@50 as mmtracking reports it; ilsvrc: the official VID devkit rules; "
        "lvis: the LVIS/TAO federated rules (negative / not-exhaustive categories, 300 per image)",
    )
    v.add_argument(
        "--motion-iou",
        default=None,
        help="official per-object motion IoU .mat (ImageNet VID val) instead of computing it",
    )
    v.add_argument(
        "--backend",
        choices=("lvod", "pycocotools"),
        default="lvod",
        help="lvod: its own exact matcher (fast, scales to ImageNet VID val; default); "
        "pycocotools: COCOeval per chunk of images (about 25x slower, coco protocol)",
    )
    _add_uncertainty(v)
    v.set_defaults(func=_eval)

    k = sub.add_parser(
        "calibrate",
        help="choose a post-hoc calibration's parameter on held-out training videos (RUN/calibration.json)",
    )
    k.add_argument("run", help="run folder (config.resolved.json + checkpoint); with --write-split also a config")
    k.add_argument("--checkpoint", default="latest.pth", help="checkpoint in the run folder, or a path")
    k.add_argument("--config", default=None, help="config (default: RUN/config.resolved.json)")
    k.add_argument(
        "--method",
        default="norcal",
        help="tau_norm, logit_adjust, norcal, or several comma-separated (one network pass for all)",
    )
    k.add_argument("--grid", default=None, help="parameter values, e.g. 0,0.25,0.5,0.75,1 (default; 0 always added)")
    k.add_argument(
        "--split",
        default="val_held_out",
        help="val_held_out (default: a seeded fraction of the training videos), or an annotation file "
        "disjoint from data.val",
    )
    k.add_argument("--images-root", default=None, help="with --split FILE: the folder its file names are relative to")
    k.add_argument("--fraction", type=float, default=0.2, help="held-out fraction of the training videos")
    k.add_argument("--seed", type=int, default=0, help="seed of the held-out selection")
    k.add_argument("--no-cover-classes", action="store_true", help="do not add a video for classes left out")
    k.add_argument(
        "--metric", choices=("bbox_mAP_50", "bbox_mAP", "mean_group_ap50"), default="bbox_mAP_50", help="chosen on"
    )
    k.add_argument("--count", choices=("instances", "images"), default="instances", help="n_c of the class prior")
    k.add_argument("--no-rescale", action="store_true", help="tau_norm: W/||W||^tau without keeping the mean norm")
    k.add_argument("--device", default="auto")
    k.add_argument(
        "--write-split",
        default=None,
        metavar="DIR",
        help="only write DIR/held_out.json and DIR/train_without_held_out.json (a clean protocol: train on the "
        "second, then calibrate with --split DIR/held_out.json) and stop",
    )
    k.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    k.set_defaults(func=_calibrate)

    c = sub.add_parser(
        "compare",
        help="compare runs with paired bootstrap intervals and a verdict per class, group and overall",
    )
    c.add_argument(
        "runs",
        nargs="+",
        help="NAME=PATH[,PATH...]: a run folder (its results.npz) or a results file per training seed; "
        "a bare PATH is named after its folder",
    )
    c.add_argument("--ann", required=True, help="the ground-truth annotation json the runs were tested on")
    c.add_argument("--baseline", required=True, help="the NAME the others are compared with")
    c.add_argument("--groups", default=None, help="groups.json for per-group rows")
    c.add_argument("--protocol", choices=("coco", "ilsvrc", "lvis"), default="coco")
    c.add_argument("--bootstrap", type=int, default=None, metavar="N", help="resamples (default: as lvod eval)")
    c.add_argument("--bootstrap-seed", type=int, default=0)
    c.add_argument("--out", required=True, help="folder for compare.json, compare.md and the CSV tables")
    c.set_defaults(func=_compare)


def _add_notebooks_and_jobs(sub):
    n = sub.add_parser("notebooks", help="execute the notebooks headless with papermill")
    nsub = n.add_subparsers(dest="nb_cmd", required=True, metavar="{run,list}")
    r = nsub.add_parser("run", help="execute a notebook (01..04, a file name, or 'all') into a run folder")
    r.add_argument("name", help="01, 02_train, a path, or all")
    r.add_argument(
        "-p",
        "--parameter",
        nargs=2,
        action="append",
        default=[],
        metavar=("KEY", "VALUE"),
        help="papermill parameter (VALUE is parsed as JSON when it can be, else kept as text)",
    )
    r.add_argument("--run-dir", default=None, help="run folder (default runs/notebooks-<timestamp>)")
    r.set_defaults(func=_notebooks_run)
    ls = nsub.add_parser("list", help="list the notebooks")
    ls.set_defaults(func=_notebooks_list)

    j = sub.add_parser("demo-job", help="the main job on the built-in demo data (README command 1)")
    j.add_argument("--out", default="runs/demo", help="run folder")
    j.add_argument("--seed", type=int, default=0, help="the demo data, the bootstrap resamples and the training seed")
    j.add_argument(
        "--seeds",
        default=None,
        metavar="S1,S2,...",
        help="train and test every method once per training seed (RUN/seed<N>/...), on the same data, and "
        "compare the methods over their seeds (mean, seed spread, paired intervals); each seed costs the "
        "job's training again (about 12 minutes on 2 cores)",
    )
    j.add_argument("--quick", action="store_true", help="a much shorter run, for smoke tests")
    j.add_argument(
        "--end-to-end",
        default="",
        metavar="HEADS",
        help="also train these heads end to end from random weights, e.g. eqlv2 or eqlv2,fedloss "
        "(each costs one more baseline-sized training, about 8 minutes on 2 cores)",
    )
    j.set_defaults(func=_demo_job)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvod", description="Long-tail video object detection workbench (run 'lvod CMD --help')."
    )
    parser.add_argument("--version", action="version", version=f"lvod {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="CMD")
    _add_data(sub)
    _add_stats_groups(sub)
    _add_engine(sub)
    _add_notebooks_and_jobs(sub)
    _remember_parsers(parser)
    return parser


def _remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Give every (sub)command's namespace its own parser (``_parser``), so that an error
    found after parsing shows that command's usage, not the top-level one."""
    parser.set_defaults(_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sp in action.choices.values():
                _remember_parsers(sp)


# ----------------------------------------------------------------------------- data


def _data_demo(a) -> int:
    print(format_demo_summary(make_demo(a.out, seed=a.seed)))
    return 0


def _data_convert(a) -> int:
    wanted = tuple(s.strip() for s in a.splits.split(",") if s.strip())
    if not wanted or any(s not in LIST_FILES for s in wanted):
        raise UsageError(f"--splits {a.splits!r}: choose a comma-separated subset of {','.join(LIST_FILES)}")
    r = convert_imagenet_vid(a.root, a.out, lists_dir=a.lists, splits=wanted)
    for split in wanted:
        print(format_counts(split, r[split]))
        print(f"  written: {r['paths'][split]}")
    return 0


def _data_check(a) -> int:
    report = check_file(a.ann, images_root=a.images)
    print(report.format())
    return 0 if report.usable else 1


def _data_longtail(a) -> int:
    r = write_longtail_split(a.train_json, a.out, ratio=a.ratio, profile=a.profile, seed=a.seed, det_json=a.det)
    split, summary = r["split"], r["summary"]
    for part in (split.vid, split.det):
        if part is None:
            continue
        rows = part.rows()
        cols = list(rows[0]) if rows else []
        print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        for row in rows:
            print("| " + " | ".join(str(row[c]) for c in cols) + " |")
        s = part.summary()
        print(
            f"{s['unit']}s: achieved ratio {s['achieved_ratio']} (targets allow {s['target_ratio']}, asked {a.ratio})"
        )
        for miss in s["classes_not_met"]:
            print(
                f"  not met: {miss['name']} (id {miss['cat_id']}) {miss['after']} for a target of {miss['target']}: "
                f"{miss['reason']}"
            )
    print(f"achieved ratio {summary['achieved_ratio']}; wrote " + ", ".join(str(p) for p in r["files"].values()))
    return 0


# ----------------------------------------------------------------------------- statistics, groups


def _stats(a) -> int:
    r = write_stats(a.ann, a.out)
    print(format_stats(r["stats"], r["summary"]))
    print("wrote " + ", ".join(str(p) for p in r["paths"].values()))
    return 0


def _groups(a) -> int:
    if a.source is None and a.from_bags is None:
        raise UsageError("give an annotation json or stats CSV, or --from-bags DIR")
    try:
        edges = [float(e) for e in a.edges.replace(" ", "").split(",") if e] if a.edges else None
        table, paths = make_groups(
            a.source,
            a.out,
            method=a.method,
            edges=edges,
            k=a.k,
            dataset=a.dataset,
            bags_dir=a.bags_dir,
            from_bags=a.from_bags,
            basis=a.basis,
        )
    except DataError:
        raise
    except ValueError as exc:  # bad --edges / -k for the method
        raise UsageError(str(exc)) from None
    print(format_groups(table))
    if a.from_bags is not None:
        print(f"groups: BAGS files in {a.from_bags}")
    print(
        f"source: {a.source} ({counts_description(a.source, table.basis)})"
        if a.source is not None
        else "counts: none (no source given; labels 1..C are the category ids)"
    )
    print(f"wrote {paths['groups']}" + (f" and BAGS files in {a.bags_dir}" if a.bags_dir else ""))
    return 0


# ----------------------------------------------------------------------------- train, test, infer, eval


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(" ", "").split(",") if s]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give whole numbers, e.g. --seeds 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise UsageError(f"--seeds {text!r}: give distinct seeds, e.g. --seeds 0,1,2")
    return seeds


def _train_seeds(a, cfg, run_dir: Path) -> int:
    """``lvod train --seeds``: one run folder per seed, one after the other (each under
    torchrun with ``--gpus N``) or side by side (one thread each)."""
    if a.nnodes or a.resume_from:
        raise UsageError("--seeds trains on this machine; --nnodes and --resume-from go with a single run")
    if a.gpus > 1 and a.side_by_side:
        raise UsageError("--side-by-side trains one process per seed; with --gpus N the seeds run one after the other")
    runs = seed_runs(run_dir, _parse_seeds(a.seeds))
    if a.side_by_side:
        train_side_by_side({name: (a.config, d, [f"train.seed={name[4:]}"]) for name, d in runs.items()}, a.overrides)
    elif a.gpus > 1:  # one torchrun per seed, one after the other
        for name, d in runs.items():
            cmd = torchrun_command(a.config, d, a.gpus, a.resume, [*a.overrides, f"train.seed={name[4:]}"])
            print(f"{name}: run folder {d}\nlaunching: {shlex.join(cmd)}", flush=True)
            rc = subprocess.call(cmd)
            if rc != 0:
                print(f"{name}: training failed (exit {rc}); the later seeds were not started", file=sys.stderr)
                return rc
    else:
        for name, d in runs.items():
            seed_cfg = load_config(a.config, [*a.overrides, f"train.seed={name[4:]}"])
            checkpoint = find_resume_checkpoint(d, a.resume)
            print(f"{name}: run folder {d}" + (f" (resuming from {checkpoint})" if checkpoint else ""), flush=True)
            result = train(seed_cfg, d, resume=checkpoint)
            print(f"{name}: done, {result['iter']} iterations", flush=True)
    print(f"compare them: lvod compare {cfg.name}={','.join(str(d) for d in runs.values())} ...", flush=True)
    return 0


def _train(a) -> int:
    if a.init_from:  # a config override, so that torchrun, --seeds and the run's config carry it
        path = a.init_from
        quoted = f"'{path}'" if "'" not in path else '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
        a.overrides = [*a.overrides, f"train.init_from={quoted}"]
    cfg = load_config(a.config, a.overrides)
    run_dir = Path(a.work_dir) if a.work_dir else default_run_dir(cfg)
    if a.seeds:
        return _train_seeds(a, cfg, run_dir)
    if a.side_by_side:
        raise UsageError("--side-by-side goes with --seeds")
    resume = a.resume_from or a.resume
    nodes = {
        k: getattr(a, k)
        for k in ("nnodes", "node_rank", "master_addr", "master_port", "rdzv_endpoint", "rdzv_id")
        if getattr(a, k) is not None
    }
    if (a.gpus > 1 or nodes) and "LOCAL_RANK" not in os.environ:
        try:
            cmd = torchrun_command(a.config, run_dir, a.gpus, resume, a.overrides, **nodes)
        except ValueError as exc:  # flags that do not go together
            raise UsageError(str(exc)) from None
        print(f"run folder: {run_dir}\nlaunching: {shlex.join(cmd)}", flush=True)
        return subprocess.call(cmd)
    checkpoint = find_resume_checkpoint(run_dir, resume)
    rank = int(os.environ.get("RANK", "0"))
    if rank == 0:
        print(f"run folder: {run_dir}" + (f" (resuming from {checkpoint})" if checkpoint else ""), flush=True)
    try:
        result = train(cfg, run_dir, resume=checkpoint)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if rank == 0:
        print(f"done: {result['iter']} iterations; run folder: {run_dir}", flush=True)
    return 0


def _test(a) -> int:
    r = test_model(
        a.config,
        a.checkpoint,
        eval=() if a.no_eval else tuple(a.eval),
        out=a.out,
        groups=a.groups,
        device=a.device,
        overrides=a.overrides,
        bootstrap=_bootstrap_arg(a.bootstrap),
        seed=a.bootstrap_seed,
        ap_fixed=a.ap_fixed,
        calibrate=a.calibrate,
        rescoring=a.rescoring,
    )
    inf, files = r["inference"], r["files"]
    print(
        f"inference: {inf['frames']} frames in {inf['videos']} videos, {inf['detections']} detections, "
        f"{inf['frames_per_second']:.2f} frames/s on {inf['device']}"
    )
    print(_postprocessing_line(r))
    print(f"wrote {files['results']}")
    if r["note"]:
        print(r["note"])
    if files["coco_json"] is not None:
        print(f"wrote {files['coco_json']}")
    if "classwise" in r:
        print(format_tables(r), end="")
        if r["dropped_unknown_category"]:
            print(
                f"note: {r['dropped_unknown_category']} detections had a category_id not in the test split; not scored"
            )
        print("wrote " + ", ".join(str(files[k]) for k in ("metrics", "classwise", "groups")))
    return 0


def _infer(a) -> int:
    r = infer_video(
        a.config,
        a.checkpoint,
        a.input,
        a.out,
        draw=a.draw,
        video=a.video,
        score_thr=a.score_thr,
        device=a.device,
        random_weights=a.random_weights,
        max_frames=a.max_frames,
        overrides=a.overrides,
        calibrate=a.calibrate,
        rescoring=a.rescoring,
    )
    count, total = r["frames"], r["total_frames"]
    drawing = r["files"]["frames"] is not None or r["files"]["video"] is not None
    print(_postprocessing_line(r))
    print(
        f"{r['kind']} {r['input']}: {count} frames"
        + (f" (first {count} of {total})" if count < total else "")
        + f", {r['detections']} detections written (score >= {r['min_score']:g}, model.test_score_thr), "
        + (
            f"{r['drawn']} drawn (score >= {r['score_thr']:g}, --score-thr)"
            if drawing
            else f"{r['above_score_thr']} with score >= {r['score_thr']:g} (--score-thr; --draw or --video draws them)"
        )
        + f"; class names from {r['class_names_from']}"
    )
    print(f"wrote {r['files']['detections']}")
    if r["files"]["frames"] is not None:
        print(f"wrote {count} drawn frames to {r['files']['frames']}")
    if r["files"]["video"] is not None:
        print(f"wrote {r['files']['video']}")
    return 0


def _calibrate(a) -> int:
    if a.write_split:
        cfg_path = a.config or (a.run if Path(a.run).is_file() else Path(a.run) / "config.resolved.json")
        w = write_held_out_files(
            load_config(cfg_path, a.overrides),
            a.write_split,
            fraction=a.fraction,
            seed=a.seed,
            cover_classes=not a.no_cover_classes,
        )
        print(f"held out {len(w['videos'])} videos: wrote {w['held_out']} and {w['train']}")
        print(
            f"train on the second (data.train ann_file, images_root {w['images_root']}), then: lvod calibrate RUN "
            f"--split {w['held_out']} --images-root {w['images_root']}"
        )
        return 0
    r = calibrate_run(
        a.run,
        config=a.config,
        checkpoint=a.checkpoint,
        methods=a.method,
        grid=a.grid,
        split=a.split,
        fraction=a.fraction,
        seed=a.seed,
        cover_classes=not a.no_cover_classes,
        images_root=a.images_root,
        metric=a.metric,
        count=a.count,
        rescale=not a.no_rescale,
        device=a.device,
        overrides=a.overrides,
    )
    held = r["held_out"]
    print(
        f"held-out: {len(held['videos'])} videos, {held['frames']} frames, {held['boxes']} boxes from {held['source']}"
        + (" (the detector was trained on them: the parameter is chosen on seen data)" if held["in_training"] else "")
    )
    print(f"\nchosen on {r['metric']}\n\n| method | param | value | bbox_mAP_50 | bbox_mAP | mean_group_ap50 |")
    print("|---|---|---|---|---|---|")
    for row in r["table"]:
        mark = " (best)" if row["best"] else ""
        print(
            f"| {row['method']} | {row['param']} | {row['value']:g}{mark} | {row['bbox_mAP_50']:.4f} | "
            f"{row['bbox_mAP']:.4f} | {row['mean_group_ap50']:.4f} |"
        )
    c = r["choice"]
    if c["method"] is None:
        print(f"\nchoice: none (no grid value beats the uncalibrated detector, {r['metric']} {c['metric']:.4f})")
    else:
        print(f"\nchoice: {c['spec']} ({r['metric']} {c['metric']:.4f}, {c['gain']:+.4f} over uncalibrated)")
    print(f"wrote {r['file']}; use it with: lvod test CONFIG --checkpoint CKPT --calibrate auto")
    return 0


def _eval(a) -> int:
    try:
        check_backend(a.backend, a.protocol)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    m = evaluate_files(
        a.ann,
        a.results,
        groups=a.groups,
        protocol=a.protocol,
        motion_iou=a.motion_iou,
        backend=a.backend,
        bootstrap=_bootstrap_arg(a.bootstrap),
        seed=a.bootstrap_seed,
        ap_fixed=a.ap_fixed,
    )
    print(format_tables(m), end="")
    if m["dropped_unknown_category"]:
        print(f"note: {m['dropped_unknown_category']} detections have a category_id not in {a.ann}; not scored")
    if a.out is not None:
        paths = write_metrics(m, a.out)
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _compare(a) -> int:
    methods = {}
    for spec in a.runs:
        name, sep, paths = spec.partition("=")
        if not sep:
            name, paths = Path(spec).name, spec
        if name in methods:
            raise UsageError(f"run name {name!r} given twice; name them NAME=PATH")
        methods[name] = [p for p in paths.split(",") if p]
    r = compare_runs(
        a.ann,
        methods,
        baseline=a.baseline,
        groups=a.groups,
        protocol=a.protocol,
        bootstrap=a.bootstrap,
        seed=a.bootstrap_seed,
        out=a.out,
    )
    print(format_comparison(r), end="")
    print("wrote " + ", ".join(str(p) for p in r["files"].values()))
    return 0


# ----------------------------------------------------------------------------- notebooks, main job


def _notebooks_run(a) -> int:
    try:
        run_notebooks(a.name, a.parameter, a.run_dir)
    except NotebookFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DataError:
        raise
    except ValueError as exc:  # a parameter the notebook does not declare
        raise UsageError(str(exc)) from None
    return 0


def _notebooks_list(a) -> int:
    for nb in list_notebooks():
        print(nb.stem)
    return 0


def _demo_job(a) -> int:
    heads = tuple(h for h in a.end_to_end.split(",") if h)
    unknown = [h for h in heads if h not in END_TO_END]
    if unknown:
        raise UsageError(f"--end-to-end: unknown head {unknown[0]!r}; use one of {', '.join(END_TO_END)}")
    seeds = _parse_seeds(a.seeds) if a.seeds else None
    r = run_demo_job(a.out, seed=a.seed, train_seeds=seeds, quick=a.quick, end_to_end=heads)
    print(f"\n{r['summary']}\n\nmain job finished in {r['seconds']:.0f} s")
    print(f"report: {Path(r['report']).resolve()}\nrun folder: {Path(r['run_dir']).resolve()}")
    return 0


# ----------------------------------------------------------------------------- entry point


def main(argv=None) -> int:
    parser = build_parser()
    # overrides (key=value) may come after options: argparse leaves those as extras
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"lvod {args.cmd}: error: {exc}", file=sys.stderr)
        return 2
    except (DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except NonFiniteLossError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
