"""The journeys' fixtures live in journey.py, beside the helpers they use."""

from journeys.journey import trained, user  # noqa: F401
