"""``lvod test``: video inference over the config's test split, then the evaluation table.

``test_model(config, checkpoint, eval=("bbox",), out=None, groups=None, device="auto",
overrides=())`` keeps the original's command line (``test.py <config> --checkpoint ...
--eval bbox --out results.pkl``) and does, in order:

1. load the config (plus ``key=value`` overrides), the split ``data.val`` (its
   ``ann_file``/``images_root`` relative to ``data.root``) and the detector with its
   weights (lvod or mmtracking checkpoint, every key must fit);
2. stream every video through ``run_inference`` into the compact results file
   (``lvod.evaluation.results.ResultsWriter``: columns on disk, assembled atomically), so
   ImageNet VID val (176k frames x 100 detections) never exists as Python dicts;
   With ``calibrate`` (``--calibrate`` / ``test.calibrate``) the RoI head scores with a
   post-hoc calibration (``lvod.models.calibration``; ``auto`` reads the checkpoint
   folder's ``calibration.json`` from ``lvod calibrate``); with ``rescoring = "seq_nms"``
   (``--rescoring`` / ``test.rescoring``) each video's detections are rescored by Seq-NMS
   (``lvod.engine.rescoring``) before they are written. Both are recorded in
   ``metrics.json`` (``calibration``, ``rescoring``);
3. with ``--eval bbox``: evaluate (``lvod.evaluation.evaluate``: AP@50 as mmtracking
   reports it, per class, per frequency group, per motion speed) and write ``metrics.json``
   (+ ``metrics_classwise.csv``, ``metrics_groups.csv``) beside the results.
   ``metrics.json`` also gets an ``inference`` entry (frames, frames per second, device,
   checkpoint, config).

Results files (``--out``):

- ``X.npz`` -> the lvod columnar file only (``image_id``, ``category_id``, ``bbox`` xywh,
  ``score``; plain ``numpy.load(allow_pickle=False)``).
- ``X.json`` -> ``X.npz`` plus the COCO results JSON ``X.json`` users exchange
  (``[{"image_id", "category_id", "bbox", "score"}]``, streamed out in blocks).
- ``X.pkl`` -> accepted for the original's flag, but lvod writes **no pickle**: a pickle
  runs code when it is read, so results that travel between people and machines must not
  be one. lvod writes ``X.npz`` (same data as the original's per-class arrays, loadable
  without unpickling) and says so (the returned ``"note"``, which the CLI prints).
- no ``--out`` -> ``<checkpoint folder>/test/results.npz``.

Classes and group table come with the checkpoint (``lvod.engine.train.model_identity``): a
test split whose categories are not the checkpoint's classes is refused (a ``DataError``
naming the file, the checkpoint and the first category that differs), and the detector is
built with the checkpoint's group table, so a BAGS or federated-loss run tests from any
folder without its ``groups.json``. Checkpoints written before lvod stored these (and
mmtracking ones) are taken as trained on the split's categories, with the config's
``model.groups_file``, as before.

Per-group AP uses ``groups`` (a ``groups.json`` from ``lvod groups``), else the checkpoint's
table, else the config's ``model.groups_file`` when set. The function returns the metrics;
``lvod/cli.py`` prints them.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from lvod.errors import DataError

logger = logging.getLogger(__name__)

EVAL_METRICS = ("bbox",)


def results_paths(out, checkpoint=None) -> tuple[Path, Path | None, str | None]:
    """``(npz path, COCO json path or None, note for the user or None)`` for ``--out``."""
    if out is None:
        if checkpoint is None:
            raise DataError(
                "--out",
                "results file",
                "is needed when there is no checkpoint folder to put the results in",
                "pass --out results.json",
            )
        return Path(checkpoint).parent / "test" / "results.npz", None, None
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix == ".npz":
        return out, None, None
    if suffix == ".json":
        return out.with_suffix(".npz"), out, None
    if suffix == ".pkl":
        npz = out.with_suffix(".npz")
        return (
            npz,
            None,
            (
                f"note: lvod does not write pickles (reading one can run code); "
                f"the results are in {npz} (numpy columns: image_id, category_id, "
                "bbox xywh, score). Pass --out NAME.json for COCO results JSON."
            ),
        )
    raise DataError(
        "--out",
        str(out),
        f"unknown results format {out.suffix!r}",
        "use NAME.json (COCO results + .npz), NAME.npz, or NAME.pkl (written as .npz)",
    )


def _check_eval(metrics) -> tuple[str, ...]:
    metrics = tuple(metrics or ())
    bad = [m for m in metrics if m not in EVAL_METRICS]
    if bad:
        raise DataError(
            "--eval", ", ".join(bad), "unknown metric", f"use one of: {', '.join(EVAL_METRICS)} (or leave --eval empty)"
        )
    return metrics


def load_split(cfg):
    """The test split ``cfg.data.val`` as ``(CocoVid, images_root or None)``."""
    from lvod.data.cocovid import load_cocovid

    val = cfg.data.val
    if not val.ann_file:
        raise DataError(
            cfg.name or "<config>",
            "data.val.ann_file",
            "is empty",
            "set [data.val] ann_file to the test split's annotation file",
        )
    root = Path(cfg.data.root)
    images_root = root / val.images_root if val.images_root else None
    ds = load_cocovid(root / val.ann_file, images_root=images_root)
    if ds.num_classes != cfg.model.num_classes:
        raise DataError(
            ds.path,
            "categories",
            f"{ds.num_classes} classes, but the model has model.num_classes = {cfg.model.num_classes}",
            "evaluate on the split the model was trained for, or fix num_classes",
        )
    return ds, images_root


def _warn_if_groups_file_differs(groups_file, table, checkpoint) -> None:
    """Log a warning when the config's ``model.groups_file`` is reachable and holds another
    table than the checkpoint's (which the detector was trained with, and which is used)."""
    from lvod.bags_io import groups_to_dict, load_groups

    if not groups_file or not Path(groups_file).is_file():
        return
    try:
        same = groups_to_dict(load_groups(groups_file)) == groups_to_dict(table)
    except DataError:
        same = False
    if not same:
        logger.warning(
            "model.groups_file %s differs from the group table %s was trained with; the checkpoint's is used "
            "(pass --groups %s for per-group AP by that file)",
            groups_file,
            checkpoint,
            groups_file,
        )


def test_model(
    config,
    checkpoint,
    eval=("bbox",),
    out=None,
    groups=None,
    device="auto",
    overrides=(),
    *,
    random_weights: bool = False,
    progress: bool = True,
    bootstrap: int | str = 0,
    seed: int = 0,
    ap_fixed: bool | int = False,
    calibrate=None,
    rescoring: str | None = None,
) -> dict:
    """``lvod test``: run inference on ``config``'s test split, write the results, evaluate.

    ``calibrate``: ``"none"``, ``"auto"``, ``"NAME:PARAM=VALUE"`` or a
    :class:`~lvod.models.calibration.Calibration` (None: the config's ``test.calibrate``).
    ``rescoring``: ``"none"`` or ``"seq_nms"`` (None: the config's ``test.rescoring``, whose
    ``test.seq_nms_*`` options apply either way).

    ``bootstrap``/``seed``/``ap_fixed``: as :func:`lvod.evaluation.evaluate` (intervals over
    videos, AP-fixed beside the standard numbers).

    ``config``: a config file (plus ``overrides``) or a loaded ``Config``. ``groups``: a
    groups.json for per-group AP, else the table the checkpoint carries, else the config's
    ``model.groups_file`` (each file is read once: the model is built with the
    checkpoint's or the config's table, the evaluation uses ``groups`` when given, else
    the same table). The checkpoint is read once, before anything runs; a split whose
    categories are not the checkpoint's classes raises ``DataError``.

    Returns the metrics dict that ``metrics.json`` holds (:func:`lvod.evaluation.evaluate`:
    ``bbox_mAP_50``, ``classwise``, ``groups``, ``motion``, ...; only with ``"bbox"`` in
    ``eval``) plus, always:

    - ``"inference"``: ``frames``, ``videos``, ``detections``, ``frames_per_second``,
      ``rescoring_seconds`` (from :func:`run_inference`), ``device``, ``config``,
      ``checkpoint``, ``results`` (the .npz), ``wall_seconds``; also written into
      ``metrics.json``;
    - ``"calibration"``: None, or the calibration applied (``method``, ``param``,
      ``value``, ``spec``, ``head``, ``count``/``rescale``, ``counts_from``; with ``auto``
      also ``from`` and ``asked``); ``"rescoring"``: ``{"method": "none"}`` or the Seq-NMS
      options; both also in ``metrics.json``;
    - ``"files"``: ``{"results": .npz, "coco_json": .json or None, "metrics",
      "classwise", "groups": the metrics files or absent}`` (Paths; not in metrics.json);
    - ``"note"``: a sentence for the user (``--out X.pkl`` is written as ``X.npz``) or None.

    Bad inputs raise ``DataError``; nothing is written before the inputs are checked.
    """
    from lvod.bags_io import load_groups
    from lvod.config import Config, load_config
    from lvod.engine.calibrate import build_calibrator, resolve_calibration
    from lvod.engine.checkpointing import has_ema, load_checkpoint
    from lvod.engine.inference import (
        build_test_transform,
        check_checkpoint_classes,
        checkpoint_group_table,
        load_model,
        resolve_device,
        run_inference,
    )
    from lvod.engine.rescoring import rescorer, rescoring_options
    from lvod.evaluation import ResultsWriter, evaluate, load_results, write_coco_json, write_metrics
    from lvod.models import read_group_table
    from lvod.models.calibration import check_supported, parse_calibration

    metrics = _check_eval(eval)
    npz, coco_json, note = results_paths(out, checkpoint)
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    where = "--calibrate" if calibrate is not None else f"{cfg.name or '<config>'}: test.calibrate"
    calibration = parse_calibration(calibrate if calibrate is not None else cfg.test.calibrate, where)
    calibration, calib_info = resolve_calibration(calibration, checkpoint, where)
    if calibration is not None:
        check_supported(cfg.model.head, calibration.method, where)
    seq_options = rescoring_options(cfg.test, rescoring)
    if groups is not None and not Path(groups).is_file():
        raise DataError(groups, "groups file", "does not exist", "write it with `lvod groups` or leave --groups out")
    ds, images_root = load_split(cfg)
    ckpt = load_checkpoint(checkpoint) if checkpoint is not None else {}
    if checkpoint is not None:
        check_checkpoint_classes(ds.path, ds.cat_ids, ds.cat_names, ckpt, checkpoint)
    model_table = checkpoint_group_table(ckpt, checkpoint)
    if model_table is not None:
        logger.info("group table: the one %s was trained with", checkpoint)
        _warn_if_groups_file_differs(cfg.model.groups_file, model_table, checkpoint)
    else:
        model_table = read_group_table(cfg.model, ds.cat_ids)
    eval_table = load_groups(groups) if groups is not None else model_table
    dev = resolve_device(device)
    model, _ = load_model(
        cfg,
        checkpoint,
        random_weights=random_weights,
        device=dev,
        cat_ids=ds.cat_ids,
        groups=model_table,
        ckpt=ckpt,
    )
    calib_record = build_calibrator(cfg, model, calibration, ds.cat_ids, calib_info)
    if calib_record is not None:
        logger.info("calibration: %s", calib_record.get("spec", "none"))
    transform = build_test_transform(cfg.data, cfg.model.image_mean, cfg.model.image_std)
    t0 = time.perf_counter()
    with ResultsWriter(npz) as writer:
        stats = run_inference(
            model,
            ds,
            images_root,
            transform,
            writer=writer,
            device=dev,
            progress=progress,
            workers=cfg.test.workers,
            as_video=cfg.data.val.load_as_video,
            rescore=rescorer(seq_options),
        )
    logger.info(
        "inference: %d frames in %d videos, %d detections, %.2f frames/s on %s",
        stats["frames"],
        stats["videos"],
        stats["detections"],
        stats["frames_per_second"],
        dev,
    )
    files: dict = {"results": npz, "coco_json": None}
    dets = None
    if coco_json is not None:
        dets = load_results(npz)
        files["coco_json"] = write_coco_json(dets, coco_json)
    inference = {
        **stats,
        "device": str(dev),
        "config": cfg.name if isinstance(config, Config) else str(config),
        "checkpoint": None if checkpoint is None else str(checkpoint),
        "weights": "ema" if cfg.test.use_ema and has_ema(ckpt) else "model",
        "results": str(npz),
        "wall_seconds": time.perf_counter() - t0,
    }
    post = {
        "calibration": calib_record,
        "rescoring": {"method": "none"} if seq_options is None else seq_options.to_dict(),
    }
    result: dict = {"inference": inference, **post}
    if "bbox" in metrics:
        dets = dets if dets is not None else load_results(npz)
        metrics = evaluate(
            ds, dets, groups=eval_table, results_file=str(npz), bootstrap=bootstrap, seed=seed, ap_fixed=ap_fixed
        )
        result = {**metrics, "inference": inference, **post}
        files.update(write_metrics(result, npz.with_name("metrics.json")))
    return {**result, "files": files, "note": note}


def rescore_tested_run(
    source,
    out_dir,
    config,
    *,
    rescoring: str = "seq_nms",
    overrides=(),
    groups=None,
    bootstrap: int | str = 0,
    seed: int = 0,
) -> dict:
    """Seq-NMS on the detections a ``lvod test`` run already wrote, without running the
    network again: what ``test_model(..., rescoring=...)`` gives, for the price of the
    rescoring alone.

    ``source``: the tested folder (its ``results.npz`` and ``metrics.json``); ``config``
    (plus ``overrides``): the config it was tested with (the split ``data.val`` and the
    ``test.seq_nms_*`` options). The source's detections are the detector's per-frame
    output, which is what ``run_inference`` hands the rescorer, so the two routes agree.
    Writes ``out_dir/results.npz`` and ``metrics.json`` (its ``inference`` entry is the
    source's, plus ``rescored_from``; ``rescoring`` the options used). Returns the metrics
    dict, as :func:`test_model` does.
    """
    import json

    from lvod.bags_io import load_groups
    from lvod.config import Config, load_config
    from lvod.engine.rescoring import rescore_detections, rescoring_options
    from lvod.evaluation import evaluate, load_results, save_results_npz, write_metrics

    source, out_dir = Path(source), Path(out_dir)
    src_npz, src_metrics = source / "results.npz", source / "metrics.json"
    for path in (src_npz, src_metrics):
        if not path.is_file():
            raise DataError(path, "file", "does not exist", f"run `lvod test ... --out {source}/results.json` first")
    cfg = config if isinstance(config, Config) else load_config(config, overrides)
    options = rescoring_options(cfg.test, rescoring)
    if options is None:
        raise DataError("--rescoring", str(rescoring), "nothing to rescore with", "use seq_nms")
    recorded = json.loads(src_metrics.read_text(encoding="utf-8"))
    if recorded.get("rescoring", {}).get("method", "none") != "none":
        raise DataError(src_metrics, "rescoring", "these detections were rescored already", "rescore a plain run")
    ds, _ = load_split(cfg)
    t0 = time.perf_counter()
    before = load_results(src_npz)
    dets = rescore_detections(before, ds, options)
    seconds = time.perf_counter() - t0
    out_dir.mkdir(parents=True, exist_ok=True)
    npz = save_results_npz(dets, out_dir / "results.npz")
    table = load_groups(groups) if groups is not None else None
    if table is None and cfg.model.groups_file:
        from lvod.models import read_group_table

        table = read_group_table(cfg.model, ds.cat_ids)
    metrics = evaluate(ds, dets, groups=table, results_file=str(npz), bootstrap=bootstrap, seed=seed)
    inference = {**recorded.get("inference", {}), "rescored_from": str(src_npz), "rescoring_seconds": seconds}
    inference["results"] = str(npz)
    result = {
        **metrics,
        "inference": inference,
        "calibration": recorded.get("calibration"),
        "rescoring": options.to_dict(),
    }
    files = {"results": npz, **write_metrics(result, out_dir / "metrics.json")}
    logger.info("Seq-NMS on %s: %d -> %d detections in %.1f s", src_npz, len(before), len(dets), seconds)
    return {**result, "files": files, "note": None}
