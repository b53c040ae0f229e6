"""Model builders. Every model takes float32 RGB pixels on the 0..255 scale and
returns logits; it normalises its own input, so an exported model needs no
outside preprocessing."""

from imgtrain.models.registry import BuiltModel, Phase, build_model

__all__ = ["BuiltModel", "Phase", "build_model"]
