"""The README is the journeys' source: each of its shell commands is run by a journey or a
reference run (its text appears in their source, where ``readme.command`` checks it against
the README) or is listed in ``readme.NOT_RUNNABLE`` with the reason."""

from __future__ import annotations

from pathlib import Path

from journeys import readme

HERE = Path(__file__).resolve().parent


def test_every_readme_command_is_run_by_a_journey_or_listed_as_not_runnable() -> None:
    sources = "\n".join(p.read_text() for p in HERE.glob("test_*.py") if p.name != "test_readme.py")
    sources += (HERE / "journey.py").read_text() + (HERE.parent / "reference_runs.py").read_text()
    commands = readme.commands()
    assert len(commands) >= 15, commands  # the parser still finds the README's blocks
    orphans = [c for c in commands if c not in readme.NOT_RUNNABLE and f'"{c}"' not in sources]
    assert not orphans, (
        "README commands that no journey runs and readme.NOT_RUNNABLE does not list: "
        + "; ".join(orphans)
        + " (add a journey under tests/journeys/ that takes it with readme.command(...), or list it)"
    )


def test_not_runnable_lists_only_commands_the_readme_holds() -> None:
    stale = [c for c in readme.NOT_RUNNABLE if c not in readme.commands()]
    assert not stale, f"readme.NOT_RUNNABLE names commands the README no longer holds: {stale}"


def test_commands_are_read_as_written() -> None:
    assert readme.normal("make demo   # sets up .venv") == "make demo"
    assert "imgtrain export --run runs/photos --format tflite" in " ".join(readme.commands())
    joined = [c for c in readme.commands() if c.startswith("TF_CONFIG=")]
    assert joined and joined[0].endswith("--output /shared/runs/x")  # the continuation line is joined
