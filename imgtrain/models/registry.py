"""Model name -> builder, and the training phases a model asks for.

Most models train in one phase. Transfer learning trains in two: a frozen
base, then the top of the base unfrozen at a lower learning rate. A model
describes its phases as data (``Phase``) and the training loop applies them,
so the loop needs no knowledge of any particular architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import keras

from imgtrain.config import ModelConfig
from imgtrain.errors import UserError


@dataclass
class Phase:
    """From ``start_epoch`` on: which variables train, at which learning-rate factor."""

    start_epoch: int
    lr_factor: float
    apply: Callable[[keras.Model], None]
    name: str = "train"


@dataclass
class BuiltModel:
    model: keras.Model
    phases: list[Phase] = field(default_factory=list)

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


def _all_trainable(model: keras.Model) -> None:
    model.trainable = True


def build_model(cfg: ModelConfig, num_classes: int, image_size: Sequence[int]) -> BuiltModel:
    from imgtrain.models import cnn, dnn, resnet

    builders = {"cnn": cnn.build, "dnn": dnn.build, "resnet50": resnet.build}
    if cfg.name not in builders:
        raise UserError(f"unknown model '{cfg.name}'; choose one of: {', '.join(builders)}")
    shape = (int(image_size[0]), int(image_size[1]), 3)
    built = builders[cfg.name](cfg, num_classes, shape)
    if isinstance(built, keras.Model):
        built = BuiltModel(built, [Phase(0, 1.0, _all_trainable)])
    built.phases[0].apply(built.model)
    return built
