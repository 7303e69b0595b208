"""An exponential moving average of the weights during training (``train.ema_decay``).

After every optimiser step each *trainable* parameter's average moves towards it::

    ema <- d_t * ema + (1 - d_t) * weight,   d_t = min(decay, (1 + t) / (10 + t))

where ``t`` counts the updates so far (1 at the first). The ramp ``(1 + t) / (10 + t)``
(as TensorFlow's ``ExponentialMovingAverage(num_updates=...)``) keeps the first updates
from averaging in the random initial weights; later ``d_t = decay`` and the average spans
about ``1 / (1 - decay)`` iterations (0.995: the last ~200). Frozen parameters and buffers
(frozen BatchNorm statistics, Seesaw's and EQLv2's accumulated counts) are not averaged:
they are copied, so the average holds the current value of everything that is not
trained (and frozen weights stay bit-identical).

The checkpoint keeps the average next to the raw weights (``ckpt["ema"] = {"decay",
"updates", "weights"}``): a resume continues both exactly, and ``lvod test`` / ``infer`` /
``calibrate`` / ``--init-from`` use the average (``lvod.engine.checkpointing.state_dict_of``;
``test.use_ema = false`` tests the raw weights instead).
"""

from __future__ import annotations

import torch


def ema_decay_at(updates: int, decay: float) -> float:
    """The decay of update number ``updates`` (1-based): ``min(decay, (1 + t) / (10 + t))``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


class WeightEMA:
    """The moving average of ``model``'s state dict (trainable parameters averaged, the rest
    copied); starts equal to the model's current weights."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"train.ema_decay must be in (0, 1) (0 switches it off), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._averaged = {name for name, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = ema_decay_at(self.updates, self.decay)
        for name, value in model.state_dict().items():
            kept = self.weights[name]
            if name in self._averaged:
                kept.mul_(d).add_(value.detach(), alpha=1.0 - d)
            else:
                kept.copy_(value)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a checkpoint's ``ema`` entry (its weights must match the model's names)."""
        missing = set(self.weights) ^ set(state["weights"])
        if missing:
            raise KeyError(f"the checkpoint's EMA weights differ from the model's: {sorted(missing)[:5]}")
        for name, value in state["weights"].items():
            self.weights[name].copy_(value)
        self.updates = int(state["updates"])
