"""The journeys' fixtures live in journey.py, beside the helpers they use."""

from journeys.journey import trained, trained_copy, user  # noqa: F401
