"""Model builders. Every model takes float32 RGB pixels on the 0..255 scale and
returns logits; it normalises its own input with built-in Keras layers, so an
exported ``model.keras`` loads with plain Keras and needs no outside preprocessing."""

from imgtrain.models.phases import BuiltModel, Phase
from imgtrain.models.registry import build_model

__all__ = ["BuiltModel", "Phase", "build_model"]
