"""Models: backbone, RPN, RoI head, box predictors (heads), FGFA and SELSA video detectors.

Entry point: ``build_model(model_cfg, cat_ids)`` (``lvod.models.build``), with
``read_group_table``; the heads' table is ``lvod.models.heads.HEADS`` and the detectors'
``lvod.models.build.DETECTORS``. The settings schema is ``lvod.config.ModelConfig``.
"""

from lvod.models.build import DETECTORS, build_model, check_group_table, read_group_table

__all__ = ["DETECTORS", "build_model", "check_group_table", "read_group_table"]
