"""The ``lvod`` command line: one subcommand per job, each with ``--help``.

Every subcommand imports its implementation lazily, so ``lvod --help`` is instant and a
problem in one part never hides the others. The functions called here return an exit
code; this module only parses arguments.
"""
from __future__ import annotations

import argparse
import sys


def _add_data(sub):
    p = sub.add_parser("data", help="build, convert and check datasets")
    dsub = p.add_subparsers(dest="data_cmd", required=True, metavar="{demo,convert-imagenet-vid,check}")

    d = dsub.add_parser("demo", help="write the built-in synthetic long-tailed video dataset")
    d.add_argument("--out", required=True, help="output folder (frames + annotations/)")
    d.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives byte-identical files")
    d.set_defaults(func=lambda a: _call("lvod.data.demo", "demo_main", a.out, a.seed))

    c = dsub.add_parser("convert-imagenet-vid",
                        help="convert the ILSVRC2015 XML tree + FGFA frame lists to CocoVID json")
    c.add_argument("--root", required=True, help="the ILSVRC2015 folder (holds Annotations/ and Data/)")
    c.add_argument("--out", required=True, help="folder for imagenet_vid_{train,val}.json and the DET file")
    c.add_argument("--lists", default=None,
                   help="folder with VID_train_15frames.txt, VID_val_videos.txt, DET_train_30classes.txt "
                        "(default: ROOT/ImageSets)")
    c.add_argument("--splits", default="train,val,det", help="comma-separated subset of train,val,det")
    c.set_defaults(func=lambda a: _call("lvod.data.imagenet_vid", "convert_main", a.root, a.out,
                                        lists=a.lists, splits=a.splits))

    k = dsub.add_parser("check", help="validate an annotation file and print what was repaired or is fatal")
    k.add_argument("ann", help="CocoVID / COCO / TAO json")
    k.add_argument("--images", default=None, help="images root: also check that every frame file exists")
    k.set_defaults(func=lambda a: _call("lvod.data.cocovid", "check_main", a.ann, images_root=a.images))


def _add_stats_groups(sub):
    s = sub.add_parser("stats", help="per-class dataset statistics (boxes, tracks, videos, frames, sizes)")
    s.add_argument("ann", help="annotation json")
    s.add_argument("--out", required=True, help="folder for class_stats.csv/.json and summary.json")
    s.set_defaults(func=lambda a: _call("lvod.stats", "stats_main", a.ann, a.out))

    g = sub.add_parser("groups", help="build BAGS frequency-group tables from an annotation file or stats CSV, "
                                      "or import the reference BAGS files")
    g.add_argument("source", nargs="?", default=None,
                   help="training annotation json, or a class_stats.csv (optional with --from-bags: gives "
                        "the category ids, names and counts the imported table is checked against)")
    g.add_argument("--dataset", required=True, help="dataset name: tables go to intermediate_files/<dataset>/")
    g.add_argument("--method", choices=("edges", "quantiles", "log"), default="quantiles",
                   help="edges: explicit count edges (BAGS: 10,100,1000); quantiles: k groups of about "
                        "equal class count; log: k log-spaced bins")
    g.add_argument("--edges", default=None, help="comma-separated instance-count edges, e.g. 10,100,1000")
    g.add_argument("-k", type=int, default=3, help="number of groups for quantiles/log (default 3)")
    g.add_argument("--bags-dir", default=None,
                   help="also write the BAGS reference files (label2binlabel.pt, pred_slice_with0.pt, "
                        "valsplit.pkl) into this folder")
    g.add_argument("--from-bags", default=None, metavar="DIR",
                   help="import the table from BAGS reference files in DIR (label2binlabel.pt, "
                        "pred_slice_with0.pt, valsplit.pkl) instead of building it; --method/--edges/-k unused")
    g.add_argument("--out", default=None, help="output json (default intermediate_files/<dataset>/groups.json)")
    g.set_defaults(func=lambda a: _call(
        "lvod.groups", "groups_main", a.source, a.out, method=a.method,
        edges=[float(e) for e in a.edges.split(",")] if a.edges else None, k=a.k, dataset=a.dataset,
        bags_dir=a.bags_dir, from_bags=a.from_bags))


def _add_engine(sub):
    t = sub.add_parser("train", help="train a detector (one or many GPUs; CPU for the demo configs)")
    t.add_argument("config", help="config file under configs/")
    t.add_argument("--work-dir", default=None, help="run folder (default work_dirs/<config name>)")
    t.add_argument("--gpus", type=int, default=1, help="GPUs on this node; > 1 launches torchrun")
    t.add_argument("--resume", action="store_true", help="continue from the run folder's latest.pth")
    t.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    t.set_defaults(func=lambda a: _call("lvod.engine.train", "train_main", a.config, work_dir=a.work_dir,
                                        gpus=a.gpus, resume=a.resume, overrides=a.overrides))

    e = sub.add_parser("test", help="run video inference on the config's test split and evaluate")
    e.add_argument("config")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--eval", nargs="+", choices=("bbox",), default=["bbox"],
                   help="metrics to evaluate (bbox, as the original test.py)")
    e.add_argument("--no-eval", action="store_true", help="only write the results file")
    e.add_argument("--out", default=None, help="results file: .json (COCO results), .npz or .pkl")
    e.add_argument("--groups", default=None, help="groups.json for per-group AP (default: the config's)")
    e.add_argument("--device", default="auto")
    e.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    e.set_defaults(func=lambda a: _call("lvod.engine.test", "test_main", a.config, a.checkpoint,
                                        eval=() if a.no_eval else tuple(a.eval), out=a.out, groups=a.groups, device=a.device,
                                        overrides=a.overrides))

    i = sub.add_parser("infer", help="detect objects in your own video file or folder of frames")
    i.add_argument("config")
    i.add_argument("input", help="a video file (mp4, avi, ...) or a folder of frames")
    i.add_argument("--checkpoint", default=None)
    i.add_argument("--random-weights", action="store_true", help="allow running without a checkpoint")
    i.add_argument("--out", required=True, help="output folder")
    i.add_argument("--draw", action="store_true", help="also write frames with boxes drawn")
    i.add_argument("--video", action="store_true", help="also write a video with boxes drawn")
    i.add_argument("--score-thr", type=float, default=0.3, help="score threshold for drawing")
    i.add_argument("--max-frames", type=int, default=None)
    i.add_argument("--device", default="auto")
    i.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    i.set_defaults(func=lambda a: _call("lvod.engine.infer", "infer_main", a.config, a.checkpoint, a.input,
                                        a.out, draw=a.draw, video=a.video, score_thr=a.score_thr,
                                        device=a.device, random_weights=a.random_weights,
                                        max_frames=a.max_frames, overrides=a.overrides))

    v = sub.add_parser("eval", help="evaluate detections (COCO AP@50 per class, group and motion speed)")
    v.add_argument("--ann", required=True, help="ground-truth annotation json")
    v.add_argument("--results", required=True, help="detections: COCO results .json or lvod .npz")
    v.add_argument("--groups", default=None, help="groups.json for per-group AP")
    v.add_argument("--out", default=None, help="metrics.json (CSV tables are written beside it)")
    v.add_argument("--protocol", choices=("coco", "ilsvrc"), default="coco",
                   help="coco: AP@50 as mmtracking reports it; ilsvrc: the official VID devkit rules")
    v.add_argument("--motion-iou", default=None,
                   help="official per-object motion IoU .mat (ImageNet VID val) instead of computing it")
    v.add_argument("--backend", choices=("lvod", "pycocotools"), default="lvod",
                   help="lvod: its own exact matcher (fast, scales to ImageNet VID val; default); "
                        "pycocotools: COCOeval per chunk of images (about 25x slower, coco protocol)")
    v.set_defaults(func=lambda a: _call("lvod.evaluation", "eval_main", a.ann, a.results, groups=a.groups,
                                        out=a.out, protocol=a.protocol, motion_iou=a.motion_iou,
                                        backend=a.backend))


def _add_notebooks_and_jobs(sub):
    n = sub.add_parser("notebooks", help="execute the notebooks headless with papermill")
    nsub = n.add_subparsers(dest="nb_cmd", required=True, metavar="{run,list}")
    r = nsub.add_parser("run", help="execute a notebook (01..04, a file name, or 'all') into a run folder")
    r.add_argument("name", help="01, 02_train, a path, or all")
    r.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="papermill parameter (VALUE is parsed as JSON when it can be, else kept as text)")
    r.add_argument("--run-dir", default=None, help="run folder (default runs/notebooks-<timestamp>)")
    r.set_defaults(func=lambda a: _call("lvod.notebooks", "run_main", a.name, a.parameter, a.run_dir))
    ls = nsub.add_parser("list", help="list the notebooks")
    ls.set_defaults(func=lambda a: _call("lvod.notebooks", "list_main"))

    j = sub.add_parser("demo-job", help="the main job on the built-in demo data (README command 1)")
    j.add_argument("--out", default="runs/demo", help="run folder")
    j.add_argument("--seed", type=int, default=0)
    j.add_argument("--quick", action="store_true", help="a much shorter run, for smoke tests")
    j.set_defaults(func=lambda a: _call("lvod.jobs", "demo_job_main", a.out, seed=a.seed, quick=a.quick))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lvod", description="Long-tail video object detection workbench (run 'lvod CMD --help').")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="CMD")
    _add_data(sub)
    _add_stats_groups(sub)
    _add_engine(sub)
    _add_notebooks_and_jobs(sub)
    return parser


def _version() -> str:
    from lvod import __version__

    return f"lvod {__version__}"


def _call(module: str, func: str, *args, **kwargs) -> int:
    import importlib

    fn = getattr(importlib.import_module(module), func)
    return int(fn(*args, **kwargs) or 0)


def main(argv=None) -> int:
    parser = build_parser()
    # overrides (key=value) may come after options: argparse leaves those as extras
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    from lvod.errors import DataError

    try:
        return args.func(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except RuntimeError as exc:
        # the training loop's NaN/inf guard says which loss at which iteration
        if type(exc).__name__ != "NonFiniteLossError":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
