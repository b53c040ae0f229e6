"""``Tracker``: the chief's MLflow tracking, run off the training thread.

Training never waits on the tracking server. Each request (the start, an epoch's end, the
run's end, a stop) goes to one background worker (``background``) that owns the ``Sender``;
the loop's thread only hands requests over and prints the lines the sender thread leaves. A
failure is one warning line, and the next attempt comes ``RETRY_SECONDS`` later during
training and once more at the end. The run's end waits for the last pieces as long as the server
answers (MLflow's own request timeout bounds each call), and ``FINAL_WAIT_SECONDS`` when it
does not; then it says what was not logged, and the same command run again logs it.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import numpy as np

from imgtrain.background import Background
from imgtrain.tracking import record
from imgtrain.tracking.sender import Sender

RETRY_SECONDS = 300.0  # between failed attempts during training
START_WAIT_SECONDS = 5.0  # the start waits this long for the server, so its line comes first
FINAL_WAIT_SECONDS = 10.0  # the run's end waits this long for a server that does not answer
END_WAIT_SECONDS = 2.0  # a stopped or failed run waits this long to mark its MLflow run so


class Tracker:
    """Logs one run directory to one MLflow run; also a loop listener (``on_epoch_end``)."""

    def __init__(self, sender: Sender, log: Callable[[str], None], restore: Callable[[], None]) -> None:
        self.sender, self.log, self.restore_settings = sender, log, restore
        self.facts: Optional[record.RunFacts] = None
        self.trained = False  # an epoch was trained in this process
        self.retry_at = 0.0
        self.healthy = False  # the last attempt reached the server
        self.warned = False
        self.said: list[str] = []  # lines from the sender thread, printed by the loop's thread
        self.worker = Background("imgtrain-mlflow", self._do)
        self.asked = False  # a request was made: the MLflow run may exist

    # -- what run.py calls -------------------------------------------------------------------
    def start(self, facts: record.RunFacts) -> None:
        """Before training: the MLflow run (found again or created), its params and tags, and the
        epochs a crash may have left unlogged. Nothing at all for a run already fully logged."""
        self.facts = facts
        if self._all_done():
            return
        self._request("sync")
        self._wait(START_WAIT_SECONDS, until_healthy=False)
        self._flush()

    def finish(self) -> None:
        """After the run's files are complete: the rest, then one line on where it all is (or on
        what could not be logged)."""
        s = self.sender
        if self._all_done():
            self.log(f"tracking: already logged to MLflow run {s.state.run_id}; {self._where()}")
            return
        self._request("final")
        self._wait(FINAL_WAIT_SECONDS, until_healthy=True)
        self._flush()
        pending = record.pending(s.params_logged, s.epochs_logged, s.run_dir, s.state.final_pending())
        if pending or not self.worker.idle():
            self.log(
                f"warning: not logged to MLflow at {s.uri}: {', '.join(pending) or 'the last pieces'}; the run "
                f"itself is complete in {s.run_dir}; run the same command again to log the rest"
            )
        else:
            model = f", model {s.state.model_uri}" if s.state.model_uri else ""
            self.log(f"tracking: logged to MLflow run {s.state.run_id}{model}; {self._where()}")

    def end(self, status: str) -> None:
        """A run leaving early (KILLED: stopped; FAILED: an error) says so in MLflow, waiting a
        moment at most: a signal's grace period is short."""
        if self.asked:
            self._request("end", status)
            self._wait(END_WAIT_SECONDS, until_healthy=False)

    # -- the loop's listener interface -------------------------------------------------------
    def on_train_begin(self, hparams: dict[str, Any], sample: Optional[np.ndarray]) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float], lr: float, img_s: float, improved: bool) -> None:
        if not self.trained:
            self.trained = True
            self._request("forget final")
        if time.monotonic() >= self.retry_at:
            self._request("sync")
        self._flush()

    def close(self) -> None:
        pass

    def restore(self) -> None:
        """The run is over: no more requests (a call still waiting on a silent server is left to
        fail alone), and MLflow's environment and loggers back as they were."""
        self.worker.close()
        self.restore_settings()

    # -- the sender thread -------------------------------------------------------------------
    def _request(self, what: str, arg: str = "") -> None:
        self.asked = True
        self.worker.ask(what, arg)

    def _do(self, what: str, arg: str) -> None:
        s, first = self.sender, not self.sender.connected
        if what == "forget final":
            s.forget_final()
            return
        try:
            if what == "end":
                s.terminate(arg)
                return
            s.connect(self.facts.tags if self.facts else {})
            s.log_params(self.facts or record.RunFacts({}, {}, []))
            s.log_epochs()
            if what == "final":
                s.log_final(self.facts.image_size if self.facts else [])
            self.healthy, self.retry_at = True, 0.0
            if first:
                self.said.append(
                    f"tracking: MLflow run {s.state.run_id} in experiment '{s.experiment}'; {self._where()}"
                )
        except Exception as exc:  # noqa: BLE001 - any failure of tracking is a warning, never a crash
            s.connected, self.healthy = False, False
            self.retry_at = time.monotonic() + RETRY_SECONDS
            if not self.warned:
                self.warned = True
                self.said.append(
                    f"warning: MLflow tracking at {s.uri} failed ({record.reason(exc)}); training goes on, "
                    "and imgtrain tries again later"
                )

    def _wait(self, seconds: float, until_healthy: bool) -> None:
        """Until the requests are done; at most ``seconds`` unless ``until_healthy`` and the server
        answers (then as long as it does)."""
        self.worker.wait(seconds, longer=lambda: until_healthy and self.healthy)

    def _flush(self) -> None:
        while self.said:
            self.log(self.said.pop(0))

    def _all_done(self) -> bool:
        return self.sender.state.all_done(self.sender.uri)

    def _where(self) -> str:
        s = self.sender
        return record.where(s.uri, s.state.experiment_id, s.state.run_id)
