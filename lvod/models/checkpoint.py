"""Weights in and out of lvod models: torchvision ResNet weights, mmtracking checkpoints,
FlowNetSimple weights, and the decoupled-training freeze.

- ``load_torchvision_resnet(backbone, spec)``: a torchvision ResNet state dict from a local
  file, or ``"torchvision://IMAGENET1K_V1"`` (torchvision's weight enum; downloads).
- ``import_mmtracking(state_dict_or_path, model, kind=...)``: mmtracking 0.x FGFA / SELSA /
  DFF / Temporal RoI Align R50-DC5 checkpoints (model-zoo layout) renamed through
  ``KEY_RULES``, the one mapping definition; ``mapping_table_markdown()`` renders it and
  ``write_mapping_doc()`` writes it into ``docs/checkpoint_mapping.md``.
- ``load_flownet_weights(motion, path)``: the FlowNetSimple pretrained file.
- ``freeze_all_but_classifier(model)``: BAGS' decoupled protocol (train ``fc_cls`` only).

Every file is read with ``torch.load(weights_only=True)``; ``{"state_dict": ...}`` and bare
state dicts are both accepted. A shape mismatch is refused before anything is copied.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from lvod.errors import DataError
from lvod.io import atomic_write
from lvod.models.heads import BagsHead, SeesawHead, SoftmaxHead
from lvod.models.predictor import BoxPredictor
from lvod.models.sigmoid_heads import EqlV2Head


# ------------------------------------------------------------------------ the key mapping
@dataclass(frozen=True)
class KeyRule:
    """mmtracking keys matching ``mm`` (fnmatch pattern) go to ``lvod`` (same ``*`` text
    substituted; ``None`` = dropped on purpose), with ``transform`` applied to the tensor."""

    mm: str
    lvod: str | None
    transform: str = "copy"
    note: str = ""


_ROI = "detector.roi_head"
_CLS = f"{_ROI}.bbox_head"
KEY_RULES: tuple[KeyRule, ...] = (
    KeyRule(
        f"{_CLS}.fc_cls.*",
        f"{_CLS}.predictor.fc_cls.*",
        "cls_rows",
        "softmax head: rows [cls 0..C-1, bg] -> [bg, cls 1..C]; BAGS / Seesaw: as is",
    ),
    KeyRule(
        f"{_CLS}.fc_reg.*",
        f"{_CLS}.predictor.fc_reg.*",
        "copy",
        "4 rows per class in class order, no background rows in either",
    ),
    KeyRule(
        "detector.backbone.*num_batches_tracked",
        "detector.backbone.*num_batches_tracked",
        "counter",
        'BatchNorm batch counter: copied into model.backbone_norm = "eval" (mmtracking\'s '
        'norm_eval BatchNorm); dropped for "frozen" (FrozenBatchNorm2d has none)',
    ),
    KeyRule(
        f"{_CLS}.aggregator.*",
        f"{_CLS}.aggregator.*",
        "copy",
        "SELSA / Temporal RoI Align: SelsaAggregator after each shared FC (2 / 3)",
    ),
    KeyRule(
        f"{_ROI}.bbox_roi_extractor.*",
        f"{_ROI}.bbox_roi_extractor.*",
        "copy",
        "Temporal RoI Align: TemporalRoIAlign's embed_network.conv (3x3, 512 -> 512, with bias)",
    ),
    KeyRule(
        "detector.*",
        "detector.*",
        "copy",
        "backbone (torchvision ResNet names), neck, rpn_head, shared_fcs (3 in Temporal RoI Align)",
    ),
    KeyRule("motion.*", "motion.*", "copy", "FGFA, DFF: FlowNetSimple"),
    KeyRule("aggregator.*", "aggregator.*", "copy", "FGFA: embedding convs"),
)

# The modules a checkpoint of each kind has (KIND_SIGNATURE) and those it cannot have
# (KIND_EXCLUDES): FGFA = motion + aggregator, DFF = motion alone, SELSA = RoI aggregators,
# Temporal RoI Align = RoI aggregators + the temporal RoI extractor.
KIND_SIGNATURE = {
    "fgfa": "motion.",
    "selsa": f"{_CLS}.aggregator.",
    "dff": "motion.",
    "temporal_roi_align": f"{_ROI}.bbox_roi_extractor.",
}
KIND_EXCLUDES = {
    "fgfa": (),
    "selsa": (f"{_ROI}.bbox_roi_extractor.",),
    "dff": ("aggregator.",),
    "temporal_roi_align": (),
}


def checkpoint_kind(state) -> str | None:
    """The mmtracking detector whose modules the keys of ``state`` show (``"fgfa"``,
    ``"dff"``, ``"temporal_roi_align"``, ``"selsa"``), or None (a plain detector)."""

    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in state)

    if has("motion."):
        return "fgfa" if has("aggregator.") else "dff"
    if has(f"{_ROI}.bbox_roi_extractor."):
        return "temporal_roi_align"
    return "selsa" if has(f"{_CLS}.aggregator.") else None


def map_key(mm_key: str) -> tuple[str | None, KeyRule | None]:
    """lvod key of an mmtracking key and the rule used; ``(None, None)`` when no rule
    matches, ``(None, rule)`` when the rule drops the key."""
    for rule in KEY_RULES:
        if fnmatch.fnmatchcase(mm_key, rule.mm):
            if rule.lvod is None:
                return None, rule
            head = rule.mm.split("*")[0]
            return rule.lvod.split("*")[0] + mm_key[len(head) :], rule
    return None, None


def mapping_table_markdown() -> str:
    """The mapping as a markdown table (first matching row wins), as in the docs."""
    rows = ["| mmtracking key | lvod key | tensor | note |", "| --- | --- | --- | --- |"]
    for r in KEY_RULES:
        rows.append(f"| `{r.mm}` | {'(dropped)' if r.lvod is None else f'`{r.lvod}`'} | {r.transform} | {r.note} |")
    return "\n".join(rows) + "\n"


def write_mapping_doc(path) -> bool:
    """Put ``mapping_table_markdown()`` in place of the mapping table of the markdown file
    ``path`` (``docs/checkpoint_mapping.md``: the table that starts with its header row);
    the file is written atomically, and only when the table changed. Returns whether it did.

        python -c "from lvod.models.checkpoint import write_mapping_doc as w; w('docs/checkpoint_mapping.md')"
    """
    text = Path(path).read_text(encoding="utf-8")
    table = mapping_table_markdown()
    header = table.split("\n", 1)[0]
    start = text.find(header)
    if start < 0:
        raise DataError(path, "key mapping", f"has no table starting with {header!r}", "add that header row")
    end = start
    while end < len(text) and text.startswith("|", end):  # the table: consecutive "|" lines
        end = text.find("\n", end) + 1 or len(text)
    new = text[:start] + table + text[end:]
    if new == text:
        return False
    with atomic_write(path, "w") as f:
        f.write(new)
    return True


def bg_last_to_first(t: Tensor) -> Tensor:
    """Rows ``[class 0..C-1, background]`` (mmdet) -> ``[background, class 1..C]`` (lvod)."""
    return torch.cat([t[-1:], t[:-1]], dim=0)


def _convert_cls_rows(t: Tensor, head: BoxPredictor | None, key: str, source) -> Tensor:
    if isinstance(head, SoftmaxHead) and t.shape[0] == head.num_classes + 1:
        return bg_last_to_first(t)
    if head is None or isinstance(head, (BagsHead, SeesawHead, EqlV2Head)) or t.shape[0] != head.num_logits:
        return t  # BAGS rows follow the checkpoint's tables; seesaw and eqlv2 are already mmdet's layout
    raise DataError(
        source,
        key,
        f"unknown classifier layout for {type(head).__name__}",
        "import into a softmax, bags, seesaw or eqlv2 head",
    )


# ------------------------------------------------------------------------ reading files
def read_state_dict(src) -> tuple[dict[str, Tensor], str]:
    """``(state_dict, source name)`` from a path, a ``{"state_dict": ...}`` dict or a bare
    state dict; files are read with ``weights_only=True``."""
    name = "<state dict>"
    if isinstance(src, (str, Path)):
        name = str(src)
        if not Path(src).is_file():
            raise DataError(name, "file", "does not exist", "give the path of a .pth checkpoint")
        try:
            src = torch.load(src, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling failure means "not usable"
            raise DataError(
                name,
                "file",
                f"cannot be read as a weights-only checkpoint ({err})",
                "re-save it as a plain state dict of tensors",
            ) from None
    if isinstance(src, dict) and isinstance(src.get("state_dict"), dict):
        src = src["state_dict"]
    if not isinstance(src, dict) or not all(isinstance(v, Tensor) for v in src.values()):
        raise DataError(
            name,
            "state_dict",
            "is not a mapping of names to tensors",
            "pass a state dict or a checkpoint with a 'state_dict' entry",
        )
    return dict(src), name


@dataclass
class ImportReport:
    """What an import did. ``loaded``: (source key, lvod key) pairs copied; ``permuted``:
    lvod keys whose rows were reordered; ``dropped``: source keys left out on purpose;
    ``unexpected``: source keys with no place in the model; ``missing``: model keys the
    source did not fill (they keep their current values)."""

    source: str
    loaded: list[tuple[str, str]] = field(default_factory=list)
    permuted: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def format(self, max_keys: int = 10) -> str:
        lines = [
            f"{self.source}: loaded {len(self.loaded)} tensors ({len(self.permuted)} "
            f"row-permuted), dropped {len(self.dropped)}, unexpected "
            f"{len(self.unexpected)}, missing {len(self.missing)}"
        ]
        for what in ("unexpected", "missing"):
            keys = getattr(self, what)
            if keys:
                more = f" ... (+{len(keys) - max_keys})" if len(keys) > max_keys else ""
                lines.append(f"  {what}: {', '.join(keys[:max_keys])}{more}")
        return "\n".join(lines)


def _load_checked(model: nn.Module, mapped: dict[str, Tensor], report: ImportReport) -> None:
    """Refuse any shape mismatch (naming key and shapes), then copy all tensors at once."""
    own = model.state_dict()
    for key, t in mapped.items():
        if tuple(own[key].shape) != tuple(t.shape):
            raise DataError(
                report.source,
                key,
                f"checkpoint shape {tuple(t.shape)} != model shape {tuple(own[key].shape)}",
                "build the model with the checkpoint's settings (num_classes, head, depth) or drop this key",
            )
    model.load_state_dict(mapped, strict=False)
    report.missing = sorted(k for k in own if k not in mapped)


def _find_predictor(model: nn.Module) -> tuple[str, BoxPredictor]:
    found = [(n, m) for n, m in model.named_modules() if isinstance(m, BoxPredictor)]
    if len(found) != 1:
        raise ValueError(f"expected exactly one box predictor in the model, found {len(found)}")
    return found[0]


# ------------------------------------------------------------------------ importers
def import_mmtracking(state_dict_or_path, model: nn.Module, *, kind: str) -> ImportReport:
    """Load an mmtracking 0.x ``kind`` ("fgfa" | "selsa" | "dff" | "temporal_roi_align")
    checkpoint into an lvod detector.

    Keys are renamed by ``KEY_RULES``; the softmax classifier's rows are moved from mmdet's
    background-last to lvod's background-first order; BAGS checkpoints of the original
    group-softmax repo are copied row for row (their meaning follows the tables they were
    trained with). Raises ``DataError`` on a shape mismatch (nothing is copied then) or
    when the checkpoint lacks the ``kind``'s own modules (or has another kind's: a DFF file
    has no ``aggregator.*``, a SELSA file no ``bbox_roi_extractor.*``).
    """
    if kind not in KIND_SIGNATURE:
        raise ValueError(f"kind must be one of {sorted(KIND_SIGNATURE)}, got {kind!r}")
    state, source = read_state_dict(state_dict_or_path)
    has = any(k.startswith(KIND_SIGNATURE[kind]) for k in state)
    extra = [x for x in KIND_EXCLUDES[kind] if any(k.startswith(x) for k in state)]
    if not has or extra:
        other = checkpoint_kind(state)
        why = f"has '{extra[0]}*' keys" if has else f"has no '{KIND_SIGNATURE[kind]}*' keys"
        raise DataError(
            source,
            "state_dict",
            f"{why}, so it is not an mmtracking {kind} checkpoint (looks like: {other or 'none of them'})",
            f"pass kind={other!r}" if other else f"pass a checkpoint of one of {', '.join(KIND_SIGNATURE)}",
        )
    own = model.state_dict()
    try:
        head = _find_predictor(model)[1]
    except ValueError:
        head = None  # no (or several) predictors: classifier rows are copied as they are
    report = ImportReport(source)
    mapped: dict[str, Tensor] = {}
    for mm_key, t in state.items():
        lv_key, rule = map_key(mm_key)
        if rule is not None and lv_key is None:
            report.dropped.append(mm_key)
            continue
        if rule is not None and rule.transform == "counter" and lv_key not in own:
            report.dropped.append(mm_key)
            continue
        if lv_key is None or lv_key not in own:
            report.unexpected.append(mm_key)
            continue
        if rule.transform == "cls_rows":
            new = _convert_cls_rows(t, head, mm_key, source)
            if new is not t:
                report.permuted.append(lv_key)
            t = new
        mapped[lv_key] = t
        report.loaded.append((mm_key, lv_key))
    _load_checked(model, mapped, report)
    return report


def load_flownet_weights(motion: nn.Module, path) -> ImportReport:
    """mmtracking's FlowNetSimple weights (Flying Chairs) into ``motion`` (FGFA's
    ``model.motion``). Keys with or without a ``motion.`` prefix; a whole FGFA checkpoint
    works too (only its ``motion.*`` keys are used). Every FlowNetSimple parameter must be
    in the file with its shape (a half-loaded flow network is worse than an error), which
    needs ``flownet_width = 1.0``."""
    width = getattr(motion, "width", 1.0)
    if width != 1.0:
        raise DataError(
            path if isinstance(path, (str, Path)) else "<state dict>",
            "flownet_width",
            f"pretrained FlowNetSimple weights need width 1.0, got {width}",
            "set model.flownet_width = 1.0 or drop model.flownet_weights",
        )
    state, source = read_state_dict(path)
    if any(k.startswith("motion.") for k in state):
        state = {k[len("motion.") :]: v for k, v in state.items() if k.startswith("motion.")}
    own = motion.state_dict()
    report = ImportReport(source)
    mapped = {}
    for k, t in state.items():
        if k in own:
            mapped[k] = t
            report.loaded.append((k, k))
        else:
            report.unexpected.append(k)
    if not mapped:
        raise DataError(
            source,
            "state_dict",
            "no key matches the FlowNetSimple module",
            "pass mmtracking's flownet_simple weights or an FGFA checkpoint",
        )
    missing = [k for k in own if k not in mapped]
    if missing:
        raise DataError(
            source,
            missing[0],
            f"{len(missing)} FlowNetSimple parameters are not in the file",
            "pass mmtracking's flownet_simple.pth (Flying Chairs)",
        )
    _load_checked(motion, mapped, report)
    return report


def load_torchvision_resnet(backbone: nn.Module, spec) -> ImportReport:
    """torchvision ResNet weights into a backbone whose names follow torchvision's ResNet
    (``conv1, bn1, layer1..4``). ``spec``: a file path or state dict, or
    ``"torchvision://<WEIGHTS>"`` (e.g. ``IMAGENET1K_V1``; uses torchvision's download cache,
    needs network the first time). ``fc.*`` and BN batch counters are dropped; unknown keys
    are refused."""
    if isinstance(spec, str) and spec.startswith("torchvision://"):
        import torchvision.models as tvm

        depth = getattr(backbone, "depth", 50)
        enum = tvm.get_model_weights(f"resnet{depth}")
        name = spec[len("torchvision://") :]
        try:
            weights = enum[name]
        except KeyError:
            raise DataError(
                spec,
                "weights",
                f"unknown {enum.__name__} entry {name!r}",
                f"use one of {', '.join(w.name for w in enum)}",
            ) from None
        state, source = weights.get_state_dict(progress=False), spec
    else:
        state, source = read_state_dict(spec)
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    own = backbone.state_dict()
    report = ImportReport(source)
    mapped = {}
    for k, t in state.items():
        if (
            k.startswith("fc.")
            or (k.endswith("num_batches_tracked") and k not in own)
            or (k.startswith("layer4.") and getattr(backbone, "stages", 4) == 3)
        ):
            report.dropped.append(k)  # the classifier, batch counters, stage 4 of a C4 backbone
        elif k in own:
            mapped[k] = t
            report.loaded.append((k, k))
        else:
            report.unexpected.append(k)
    if report.unexpected:
        raise DataError(
            source,
            report.unexpected[0],
            f"{len(report.unexpected)} keys are not torchvision ResNet keys of this backbone",
            "pass a torchvision ResNet state dict of the same depth",
        )
    missing = [k for k in own if k not in mapped and not k.endswith("num_batches_tracked")]
    if missing:  # a half-loaded backbone is worse than an error
        raise DataError(
            source,
            missing[0],
            f"{len(missing)} keys of this backbone are not in the file (weights of another ResNet depth?)",
            f"use ResNet-{getattr(backbone, 'depth', '?')} weights or set model.depth to match the file",
        )
    _load_checked(backbone, mapped, report)
    return report


# ------------------------------------------------------------------------ decoupled training
def _stay_in_eval(module: nn.Module, args) -> None:
    """Forward pre-hook of a frozen BatchNorm: undo any ``train()`` before it runs."""
    module.training = False


def freeze_all_but_classifier(model: nn.Module) -> list[str]:
    """BAGS' decoupled protocol: only the box predictor's ``fc_cls`` keeps training.

    Sets ``requires_grad=False`` on every other parameter and puts every BatchNorm of the
    frozen part in eval mode, kept so by a forward pre-hook even after ``model.train()``.
    Returns the names of the trainable parameters (``<predictor>.fc_cls.weight/bias``).
    """
    pred_name, pred = _find_predictor(model)
    keep = {f"{pred_name}.fc_cls.{p}" if pred_name else f"fc_cls.{p}" for p in ("weight", "bias")}
    trainable = []
    for name, p in model.named_parameters():
        p.requires_grad_(name in keep)
        if name in keep:
            trainable.append(name)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not getattr(m, "_lvod_frozen", False):
            m.eval()
            m.register_forward_pre_hook(_stay_in_eval)
            m._lvod_frozen = True
    return trainable
