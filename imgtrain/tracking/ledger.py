"""``RUN_DIR/mlflow.json`` (``rundir.TRACKING``): which MLflow run a run directory logs to, and
which of its last pieces are in it. The one reader and writer of that file.

Each piece is recorded once it is in MLflow, so a piece is logged whenever the server takes
it and never twice: a resumed run continues the same MLflow run, a finished one adds
nothing, and a finished one whose last pieces did not reach the server logs them when its
command runs again.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from imgtrain import atomic, rundir

# What a finished run logs after its epochs, in this order; "finished" marks the MLflow run so.
FINAL_PIECES = ("test metrics", "report", "model", "finished")


@dataclass
class TrackState:
    """What ``mlflow.json`` holds."""

    uri: str = ""
    experiment_id: str = ""
    run_id: str = ""
    done: list[str] = field(default_factory=list)  # of FINAL_PIECES
    model_uri: str = ""

    @classmethod
    def read(cls, run_dir: Path) -> "TrackState":
        try:
            raw = json.loads((Path(run_dir) / rundir.TRACKING).read_text())
            return cls(**{k: raw[k] for k in asdict(cls()) if k in raw})
        except (OSError, ValueError, TypeError):
            return cls()

    def write(self, run_dir: Path) -> None:
        atomic.write_json(Path(run_dir) / rundir.TRACKING, asdict(self))

    def all_done(self, uri: str) -> bool:
        """Everything of a finished run is in the MLflow run at ``uri``."""
        return self.uri == uri and all(p in self.done for p in FINAL_PIECES)

    def final_pending(self) -> list[str]:
        """The last pieces not logged yet, as the user is told them ("finished" is no piece of theirs)."""
        return [p for p in FINAL_PIECES if p not in self.done and p != "finished"]
