"""Models: backbone, RPN, RoI head, box predictors (heads), FGFA and SELSA video detectors.

Entry points: ``ModelConfig`` and ``build_detector`` (``lvod.models.detector``),
``build_head`` (``lvod.models.heads``).
"""
from lvod.models.detector import ModelConfig, build_detector

__all__ = ["ModelConfig", "build_detector"]
