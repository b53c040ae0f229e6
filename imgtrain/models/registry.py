"""Model name -> builder. Every builder returns a ``BuiltModel`` (``models/phases.py``)."""

from __future__ import annotations

from typing import Callable, Sequence

from imgtrain.config import BACKBONES, ModelConfig
from imgtrain.errors import UserError
from imgtrain.models import backbones, cnn, dnn
from imgtrain.models.phases import BuiltModel

Builder = Callable[[ModelConfig, int, tuple[int, int, int]], BuiltModel]
BUILDERS: dict[str, Builder] = {"cnn": cnn.build, "dnn": dnn.build, **{name: backbones.build for name in BACKBONES}}


def build_model(cfg: ModelConfig, num_classes: int, image_size: Sequence[int]) -> BuiltModel:
    if cfg.name not in BUILDERS:  # config validation refuses these first; this guards direct calls
        raise UserError(f"unknown model '{cfg.name}'; choose one of: {', '.join(BUILDERS)}")
    shape = (int(image_size[0]), int(image_size[1]), 3)
    built = BUILDERS[cfg.name](cfg, num_classes, shape)
    built.phases[0].apply(built.model)
    return built
