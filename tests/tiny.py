"""The suite's tiny training, defined once: the image size and model every test trains with
unless it tests them, so a run takes seconds (its fixed costs, not its steps, dominate).
As ``--set`` overrides (``overrides``), command-line flags (``flags``) and a config file's
mapping (``config``)."""

from __future__ import annotations

import json

SETTINGS = {
    "data.image_size": [16, 16],
    "model.cnn.filters": [8, 16],
    "model.cnn.convs_per_block": 1,
    # The run's SavedModel (about 3 s of tracing per run) only where a test reads it.
    "export.saved_model": False,
}


def overrides() -> list[str]:
    """``key=value`` items for ``Config.load`` or ``--set``."""
    return [f"{key}={json.dumps(value, separators=(',', ':'))}" for key, value in SETTINGS.items()]


def flags() -> str:
    """The same, as an imgtrain command line's ``--set`` flags."""
    return " ".join(f"--set {item}" for item in overrides())


def config() -> dict:
    """The same, as a config file's nested mapping."""
    out: dict = {}
    for key, value in SETTINGS.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def merged(base: dict, extra: dict) -> dict:
    """``base`` with ``extra``'s entries laid over it, section by section."""
    out = dict(base)
    for key, value in extra.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) else value
    return out
