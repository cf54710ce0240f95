"""Handing back what a stopping worker holds."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .acknowledger import Acknowledger
from .leases import LeaseKeeper

log = logging.getLogger("pipeline.worker")


class Drain:
    """A stopping worker's last duty towards its messages: those queued for a task slot go back at once,
    running tasks may finish for ``grace_seconds``, then every unfinished message is released (its task
    process stopped first, by ``stop_tasks``: an old run never writes beside the next owner's) and every
    finished one acknowledged, and the drain waits for releases other threads began (a spot notice's)."""

    def __init__(
        self,
        leases: LeaseKeeper,
        acks: Acknowledger,
        *,
        grace_seconds: float,
        stop_tasks: Callable[[], None] | None = None,
    ) -> None:
        self.leases = leases
        self.acks = acks
        self.grace_seconds = grace_seconds
        self.stop_tasks = stop_tasks

    def run(self) -> None:
        grace_end = time.monotonic() + self.grace_seconds
        self._give_back_unstarted()
        self._let_running_finish(grace_end)
        self.leases.release_unfinished(before_sending=self.stop_tasks)
        try:
            self.acks.flush_all()
        except Exception:  # whatever stays undeleted is delivered again and found done (completion marker)
            log.exception("final acknowledgements failed")
        self.leases.wait_for_hand_backs()

    def _give_back_unstarted(self) -> None:
        for held in self.leases.unstarted():
            if held.future is not None and held.future.cancel():
                self.leases.release([held])

    def _let_running_finish(self, grace_end: float) -> None:
        while time.monotonic() < grace_end:
            if not self.leases.unfinished():
                break
            time.sleep(0.2)
