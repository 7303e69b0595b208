"""lvod: a research workbench for long-tail video object detection.

Subpackages:
- ``lvod.data``: CocoVID / COCO / TAO loading and validation, the demo dataset,
  the ImageNet VID converter.
- ``lvod.stats`` / ``lvod.groups``: dataset statistics and BAGS frequency groups.
- ``lvod.models``: Faster R-CNN R50-DC5, FGFA, SELSA and the long-tail heads.
- ``lvod.evaluation``: COCO AP@50 as mmtracking reports it, per class, group, motion.
- ``lvod.engine``: configs, training loop, video inference.
"""

__version__ = "0.1.0"
