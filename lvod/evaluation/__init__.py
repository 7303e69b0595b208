"""Evaluation: COCO / ILSVRC-VID AP per class, per frequency group and per motion speed.

Public API: :func:`evaluate` (metrics dict), :func:`evaluate_files` (``lvod eval``: files in,
metrics dict out),
:class:`Detections`, :class:`ResultsWriter`, :func:`load_results`, :func:`write_coco_json`,
:func:`save_results_npz`, :func:`write_metrics`, :func:`format_tables`; ``BACKENDS``: the
per-chunk matchers ``evaluate(..., backend=)`` accepts - ``"lvod"`` (own vectorised matcher,
default: meets 120 s on ImageNet VID val) and ``"pycocotools"`` (the library's COCOeval per
chunk of images, ~25x slower; :mod:`lvod.evaluation.library` says why and by how much).
"""

from lvod.evaluation.engine import BACKENDS
from lvod.evaluation.report import evaluate, evaluate_files, format_tables, write_metrics
from lvod.evaluation.results import (
    Detections,
    ResultsWriter,
    load_results,
    read_coco_json,
    save_results_npz,
    write_coco_json,
)

__all__ = [
    "BACKENDS",
    "Detections",
    "ResultsWriter",
    "evaluate",
    "evaluate_files",
    "format_tables",
    "load_results",
    "read_coco_json",
    "save_results_npz",
    "write_coco_json",
    "write_metrics",
]
