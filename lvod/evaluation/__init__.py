"""Evaluation: COCO / ILSVRC-VID AP per class, per frequency group and per motion speed.

Public API: :func:`evaluate` (metrics dict), :func:`eval_main` (``lvod eval``),
:class:`Detections`, :class:`ResultsWriter`, :func:`load_results`, :func:`write_coco_json`,
:func:`save_results_npz`, :func:`write_metrics`, :func:`format_tables`.
"""
from lvod.evaluation.report import eval_main, evaluate, format_tables, write_metrics
from lvod.evaluation.results import (Detections, ResultsWriter, load_results, read_coco_json, save_results_npz,
                                     write_coco_json)

__all__ = ["Detections", "ResultsWriter", "eval_main", "evaluate", "format_tables", "load_results",
           "read_coco_json", "save_results_npz", "write_coco_json", "write_metrics"]
