"""What a model builder returns: the Keras model and the training phases it asks for.

Most models train in one phase. Transfer learning trains in two: a frozen
base, then the top of the base unfrozen at a lower learning rate. A model
describes its phases as data (``Phase``) and the training loop applies them,
so the loop needs no knowledge of any particular architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import keras


@dataclass
class Phase:
    """From ``start_epoch`` on: which variables train, at which learning-rate factor."""

    start_epoch: int
    lr_factor: float
    apply: Callable[[keras.Model], None]
    name: str = "train"


def train_everything(model: keras.Model) -> None:
    model.trainable = True


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every BatchNormalization layer in ``model``, nested models included, in a fixed order."""
    found = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.BatchNormalization) and not layer.renorm:
            found.append(layer)
        found.extend(batchnorm_layers(layer))
    return found


@dataclass
class BuiltModel:
    model: keras.Model
    phases: list[Phase] = field(default_factory=lambda: [Phase(0, 1.0, train_everything)])
    # The BatchNorm layers that normalise with batch statistics in training, whose evaluation
    # statistics precise BN re-estimates; None: every BatchNorm layer of the model. A pretrained
    # base runs in inference mode, so its layers are left out (re-estimating them is a no-op
    # that costs a forward pass of the whole base).
    batch_stat_layers: Optional[list[keras.layers.Layer]] = None

    def batch_statistics_layers(self) -> list[keras.layers.Layer]:
        """``batch_stat_layers`` resolved: the BatchNorm layers precise BN re-estimates."""
        return batchnorm_layers(self.model) if self.batch_stat_layers is None else list(self.batch_stat_layers)

    def phase_at(self, epoch: int) -> Phase:
        current = self.phases[0]
        for p in self.phases:
            if epoch >= p.start_epoch:
                current = p
        return current

    def all_trainable_variables(self) -> list:
        """Every variable that is trainable in some phase, so one optimizer covers all phases."""
        seen: dict[int, object] = {}
        for p in self.phases:
            p.apply(self.model)
            for v in self.model.trainable_variables:
                seen.setdefault(id(v), v)
        self.phases[0].apply(self.model)
        order = {id(v): i for i, v in enumerate(self.model.variables)}
        return sorted(seen.values(), key=lambda v: order[id(v)])
