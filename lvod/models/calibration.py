"""Post-hoc calibration of a trained box classifier (no training): tau-normalisation, logit
adjustment and NorCal, applied to the classifier's outputs before the per-class NMS.

The maths are pure functions on tensors (hand-checked in tests/test_calibration.py):

- :func:`tau_norm` (Kang et al., ICLR 2020): ``W_c <- W_c / ||W_c||^tau`` on the object
  classes' rows of ``fc_cls``; :func:`tau_norm_factors` / :func:`tau_norm_logits` are the
  same transform applied to logits already computed (``z' = z + (f - 1)(z - b)`` with
  ``W' = f W``), which is what lets ``lvod calibrate`` re-score a grid of ``tau`` from one
  pass of the network.
- :func:`logit_adjust` (Menon et al., ICLR 2021): ``z_c <- z_c - tau * log(prior_c)``.
- :func:`norcal` (Pan et al., NeurIPS 2021): ``exp(z_c) / n_c^gamma`` for every object
  class, ``exp(z_bg)`` for the background, re-normalised over all columns (the reference
  implementation's default "exps" mode with re-normalisation).

``tau = 0`` and ``gamma = 0`` give back the detector's own scores bit for bit.

Decisions (a user sees them in the scores):

- **Background.** Every transform leaves the background alone: its ``fc_cls`` row, its
  logit, its probability before re-normalisation (NorCal's "separately handling the
  background class"). The decoupling paper is a classification paper without a background;
  normalising the background row too would move the object/background decision, which
  none of these methods aims to change.
- **tau-norm keeps the biases** (the classification reference drops them; in a detector
  they carry the object/background prior, and keeping them makes ``tau = 0`` exact) and,
  by default (``rescale=True``), multiplies the object rows by the geometric mean of their
  norms to the power ``tau``, so that tau only redistributes norm between classes and the
  average object/background scale stays what training left. ``rescale=False`` is the
  paper's literal ``W_c / ||W_c||^tau``.
- **Counts.** ``n_c`` = training instances of class ``c`` (``count="instances"``, REFERENCE
  section 7) or training images holding ``c`` (``count="images"``, the NorCal code's LVIS
  default); the engine computes them from the config's training data
  (``lvod.engine.calibrate.training_counts``). Counts below 1 are clamped to 1.
  ``prior_c = n_c / sum(n)`` over the object classes. On a softmax head logit adjustment
  with ``tau`` equals NorCal with ``gamma = tau`` except that every object logit is raised
  by ``tau * log(sum n)`` against the background.

Which head takes which transform (:data:`SUPPORTED`, refused with ``DataError`` otherwise):

| head | tau_norm | logit_adjust | norcal |
| --- | --- | --- | --- |
| softmax | object rows 1..C | object logits | softmax over C+1 |
| seesaw | class rows (objectness kept) | class softmax | class softmax (= logit_adjust there) |
| bags | each class's row in its group ("others" and group 0 kept) | refused | refused |
| eqlv2, fedloss (sigmoid) | class rows (EQLv2's background row kept) | refused | refused |

BAGS' scores are products of per-group softmaxes that do not sum to 1 over the classes,
and a sigmoid head scores each class on its own: neither has the one softmax over classes
(and background) that logit adjustment's derivation and NorCal's re-normalisation need.
tau-norm is a change of the classifier's weights and is defined for any of them.

:class:`ScoreCalibrator` applies one :class:`Calibration` to a head: the RoI head calls it
instead of ``predictor.scores`` (``RoIHead.score_fn``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lvod.errors import DataError


@dataclass(frozen=True)
class Method:
    """A calibration method: its parameter's name, the value that changes nothing, the
    published default (None: none, choose it on held-out data), and its options."""

    name: str
    param: str
    identity: float
    default: float | None
    options: tuple[str, ...]


METHODS: dict[str, Method] = {
    "tau_norm": Method("tau_norm", "tau", 0.0, None, ("rescale",)),
    "logit_adjust": Method("logit_adjust", "tau", 0.0, 1.0, ("count",)),
    "norcal": Method("norcal", "gamma", 0.0, None, ("count",)),
}
COUNT_BASES = ("instances", "images")
# head name (lvod.models.heads.HEADS) -> the methods defined for it (module docstring)
SUPPORTED: dict[str, tuple[str, ...]] = {
    "softmax": ("tau_norm", "logit_adjust", "norcal"),
    "seesaw": ("tau_norm", "logit_adjust", "norcal"),
    "bags": ("tau_norm",),
    "eqlv2": ("tau_norm",),
    "fedloss": ("tau_norm",),
}
_WHY_NOT = {
    "bags": "BAGS scores are products of per-group softmaxes (with an 'others' slot) that do not sum to 1 "
    "over the classes, so there is no single softmax over classes to adjust or re-normalise",
    "eqlv2": "a sigmoid head scores every class on its own; there is no softmax over classes and background "
    "to adjust or re-normalise",
    "fedloss": "a sigmoid head scores every class on its own; there is no softmax over classes and background "
    "to adjust or re-normalise",
}


@dataclass(frozen=True)
class Calibration:
    """One calibration: ``method`` (a :data:`METHODS` key) and its parameter ``value``.

    ``method=None`` means "auto: the best method ``lvod calibrate`` stored", ``value=None``
    "auto: the value it chose" (resolved by ``lvod.engine.calibrate``). ``count``: what
    ``n_c`` counts (:data:`COUNT_BASES`); ``rescale``: tau-norm keeps the mean norm.
    """

    method: str | None
    value: float | None = None
    count: str = "instances"
    rescale: bool = True

    @property
    def auto(self) -> bool:
        return self.method is None or self.value is None

    @property
    def param(self) -> str:
        return METHODS[self.method].param

    @property
    def is_identity(self) -> bool:
        return self.value is not None and self.value == METHODS[self.method].identity

    def spec(self) -> str:
        """The canonical text form, e.g. ``"norcal:gamma=0.5"``, ``"tau_norm:tau=1,rescale=false"``."""
        if self.method is None:
            return "auto"
        parts = ["auto" if self.value is None else f"{self.param}={self.value:g}"]
        if self.count != "instances" and "count" in METHODS[self.method].options:
            parts.append(f"count={self.count}")
        if not self.rescale and "rescale" in METHODS[self.method].options:
            parts.append("rescale=false")
        return f"{self.method}:{','.join(parts)}"

    def to_dict(self) -> dict:
        out = {"method": self.method, "spec": self.spec()}
        if self.method is not None:
            out.update(param=self.param, value=self.value)
            if "count" in METHODS[self.method].options:
                out["count"] = self.count
            if "rescale" in METHODS[self.method].options:
                out["rescale"] = self.rescale
        return out


def parse_calibration(text, where: str = "--calibrate") -> Calibration | None:
    """``"none"``/``""`` -> None; ``"auto"``; ``"NAME"`` (the method's published default,
    only logit_adjust has one: tau = 1); ``"NAME:auto"``; ``"NAME:PARAM=VALUE[,count=images]
    [,rescale=false]"``. A :class:`Calibration` passes through. Bad text raises ``DataError``
    naming ``where``."""
    if text is None or isinstance(text, Calibration):
        return text
    text = str(text).strip()
    usage = "write NAME:PARAM=VALUE, e.g. norcal:gamma=0.5, tau_norm:tau=1, logit_adjust:tau=1, or auto or none"

    def bad(problem):
        return DataError(where, repr(text), problem, usage)

    if text.lower() in ("", "none"):
        return None
    if text.lower() == "auto":
        return Calibration(None)
    name, _, rest = text.partition(":")
    method = METHODS.get(name.strip())
    if method is None:
        raise bad(f"unknown calibration {name.strip()!r}; valid: {', '.join(METHODS)}")
    value, count, rescale, auto = method.default, "instances", True, False
    for item in (p.strip() for p in rest.split(",") if p.strip()):
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not eq:
            if key.lower() != "auto":
                raise bad(f"{item!r} is not PARAM=VALUE")
            auto = True
        elif key == method.param:
            try:
                value = float(raw)
            except ValueError:
                raise bad(f"{method.param}={raw!r} is not a number") from None
            if not math.isfinite(value) or value < 0:
                raise bad(f"{method.param} must be a finite number >= 0, got {raw}")
        elif key == "count" and "count" in method.options:
            if raw not in COUNT_BASES:
                raise bad(f"count={raw!r}: use one of {', '.join(COUNT_BASES)}")
            count = raw
        elif key == "rescale" and "rescale" in method.options:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise bad(f"rescale={raw!r}: use true or false")
            rescale = raw.lower() in ("true", "1")
        else:
            allowed = ", ".join((method.param, *method.options))
            raise bad(f"{method.name} takes {allowed}, not {key!r}")
    if auto:
        value = None
    elif value is None:
        raise bad(f"{method.name} has no published default {method.param}; choose it on held-out data")
    return Calibration(method.name, value, count, rescale)


def check_supported(head: str, method: str, where: str = "--calibrate") -> None:
    """Raise ``DataError`` when ``method`` is not defined for the head called ``head``."""
    if method in SUPPORTED.get(head, ()):
        return
    if head not in SUPPORTED:
        problem = f"calibration does not know the logit layout of the {head!r} head"
        fix = "calibrate a checkpoint of one of: " + ", ".join(SUPPORTED)
    else:
        problem = f"{method} is not defined for the {head} head: {_WHY_NOT[head]}"
        fix = f"use {' or '.join(SUPPORTED[head])} with this head, or calibrate a softmax or seesaw checkpoint"
    raise DataError(where, method, problem, fix)


# ----------------------------------------------------------------------------- the maths


def tau_norm_factors(weight: Tensor, tau: float, rows: Tensor, *, rescale: bool = True) -> Tensor:
    """Per-row factors ``f (L,)`` of tau-normalisation: ``f_r = (s / ||W_r||)^tau`` for the
    ``rows`` given (the object classes), 1 for every other row; ``s`` = the geometric mean
    of those rows' norms with ``rescale``, else 1. ``tau = 0`` gives exact ones."""
    f = torch.ones(weight.shape[0], dtype=weight.dtype, device=weight.device)
    if tau == 0:
        return f
    norms = weight.detach()[rows].double().norm(dim=1)
    if bool((norms == 0).any()):
        raise ValueError("tau_norm: a class row of fc_cls is all zeros; its norm cannot be divided by")
    scale = norms.log().mean().exp() if rescale else norms.new_tensor(1.0)
    f[rows] = ((scale / norms) ** tau).to(f)
    return f


def tau_norm(weight: Tensor, tau: float, rows: Tensor, *, rescale: bool = True) -> Tensor:
    """``W_c / ||W_c||^tau`` (times ``s^tau``, see :func:`tau_norm_factors`) for ``rows``;
    the other rows (background, objectness, BAGS' "others") unchanged. Returns a new tensor."""
    return weight * tau_norm_factors(weight, tau, rows, rescale=rescale)[:, None]


def tau_norm_logits(logits: Tensor, bias: Tensor, factors: Tensor) -> Tensor:
    """Logits of the tau-normalised classifier from the original ones: ``z = W x + b`` and
    ``W' = f W`` give ``z' = z + (f - 1)(z - b)`` (exactly ``z`` where ``f = 1``)."""
    return logits + (factors - 1) * (logits - bias)


def logit_adjust(logits: Tensor, prior: Tensor, tau: float, columns: Tensor) -> Tensor:
    """``z_c - tau * log(prior_c)`` on ``columns`` (one per class, ``prior`` in the same
    order); other columns unchanged. Returns a new tensor (``logits`` itself for tau = 0)."""
    if tau == 0:
        return logits
    out = logits.clone()
    out[:, columns] -= tau * prior.to(logits).log()
    return out


def norcal(logits: Tensor, counts: Tensor, gamma: float, *, background: int | None = 0) -> Tensor:
    """NorCal probabilities ``(R, K)``: ``exp(z_c) / n_c^gamma`` for the object columns (all
    columns but ``background``, in order, ``counts`` one per object column), ``exp(z_bg)``
    for the background, re-normalised over the row. Computed as ``softmax(z - gamma log n)``
    (the same numbers, without overflow); ``gamma = 0`` is ``softmax(z)`` exactly.
    ``background=None``: every column is a class."""
    cols = torch.arange(logits.shape[-1], device=logits.device)
    if background is not None:
        cols = cols[cols != background]
    if gamma != 0:
        logits = logits.clone()
        logits[:, cols] -= gamma * counts.to(logits).clamp(min=1).log()
    return torch.softmax(logits, dim=-1)


# ----------------------------------------------------------------------------- heads


def head_name(predictor) -> str:
    """The ``HEADS`` name of a box predictor (``"softmax"``, ``"bags"``, ...)."""
    from lvod.models.heads import HEADS

    for name, cls in HEADS.items():
        if type(predictor) is cls:
            return name
    return type(predictor).__name__


def class_columns(predictor) -> Tensor:
    """``(C,)`` logit column (= ``fc_cls`` row) of every class 1..C in the head's layout."""
    name, C = head_name(predictor), predictor.num_classes
    if name == "softmax":
        return torch.arange(1, C + 1)
    if name in ("seesaw", "eqlv2", "fedloss"):
        return torch.arange(C)
    if name == "bags":
        from lvod.models.losses import bags_class_slots

        return bags_class_slots(predictor.pred_slice.cpu(), predictor.label2binlabel.cpu())
    check_supported(name, "tau_norm", "calibration")  # raises: unknown layout
    raise AssertionError("unreachable")


class ScoreCalibrator:
    """``calibrator(cls_logits (R, L)) -> scores (R, C+1)``, column 0 = background: the head's
    own ``scores`` with one :class:`Calibration` applied (set it as ``RoIHead.score_fn``).

    ``counts``: ``(C,)`` training counts per class 1..C (label order; needed by logit_adjust
    and norcal, clamped to >= 1). tau-norm reads ``fc_cls`` once, here: build the calibrator
    after the checkpoint is loaded. Refuses (``DataError``) a method the head does not
    support (:data:`SUPPORTED`).
    """

    def __init__(self, predictor, calibration: Calibration, counts=None):
        if calibration.auto:
            raise ValueError("resolve an 'auto' calibration first (lvod.engine.calibrate.resolve_calibration)")
        self.predictor, self.calibration = predictor, calibration
        self.head = head_name(predictor)
        check_supported(self.head, calibration.method)
        self.columns = class_columns(predictor)
        device = predictor.fc_cls.weight.device
        self.columns = self.columns.to(device)
        self.identity = calibration.is_identity
        if calibration.method != "tau_norm":
            if counts is None or len(counts) != predictor.num_classes:
                raise ValueError(f"{calibration.method} needs training counts of the {predictor.num_classes} classes")
            self.counts = torch.as_tensor(counts, dtype=torch.float64).clamp(min=1).to(device)
        if calibration.method == "tau_norm":
            w = predictor.fc_cls.weight.detach().float()
            self.factors = tau_norm_factors(w, calibration.value, self.columns, rescale=calibration.rescale)
            self.bias = predictor.fc_cls.bias.detach().float()

    def adjusted_logits(self, cls_logits: Tensor) -> Tensor:
        """The logits after the transform (``cls_logits`` itself at the identity value)."""
        c = self.calibration
        if self.identity:
            return cls_logits
        if c.method == "tau_norm":
            return tau_norm_logits(cls_logits, self.bias.to(cls_logits), self.factors.to(cls_logits))
        if c.method == "logit_adjust":
            return logit_adjust(cls_logits, self.counts / self.counts.sum(), c.value, self.columns)
        # norcal on softmax / seesaw: exp(z_c) / n_c^gamma re-normalised = softmax of the
        # shifted logits; the head's own scores do the re-normalisation
        return logit_adjust(cls_logits, self.counts, c.value, self.columns)

    def __call__(self, cls_logits: Tensor) -> Tensor:
        c = self.calibration
        if c.method == "norcal" and self.head == "softmax" and not self.identity:
            return norcal(cls_logits, self.counts, c.value, background=0)
        return self.predictor.scores(self.adjusted_logits(cls_logits))

    def describe(self) -> dict:
        return {**self.calibration.to_dict(), "head": self.head}
