"""User journeys: the README run as a user runs it (see journey.py)."""
