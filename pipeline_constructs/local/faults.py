"""Faults the local run injects into its own compute, and what they struck: workers killed, spot
interruption notices and termination lifecycle actions on timers, Batch steps that fail, poison tasks."""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipeline_constructs.local.fleets import LocalFleet


@dataclass
class Faults:
    """The faults asked for (``fail_steps`` acts in the local Batch, ``poison`` in the sample tasks, the
    timed ones through :class:`FaultInjector`), and ``events``: what struck, for the result."""

    kill_worker_every: float | None = None
    poison: int = 0
    spot_notice_after: float | None = None
    fail_steps: set[str] = field(default_factory=set)
    lifecycle_after: float | None = None
    events: list[str] = field(default_factory=list)

    @property
    def watch_spot(self) -> bool:
        """Whether workers must watch their instance metadata, where the notices arrive."""
        return self.spot_notice_after is not None or self.lifecycle_after is not None

    def describe(self) -> list[str]:
        injected = []
        if self.kill_worker_every:
            injected.append(f"kill -9 of a random worker every {self.kill_worker_every:g} s")
        if self.poison:
            injected.append(f"{self.poison} poison task(s) (input object missing)")
        if self.spot_notice_after is not None:
            injected.append(f"spot interruption notice after {self.spot_notice_after:g} s")
        if self.lifecycle_after is not None:
            injected.append(f"termination lifecycle action after {self.lifecycle_after:g} s")
        for step in sorted(self.fail_steps):
            injected.append(f"step {step} fails (exit 3)")
        return injected


class FaultInjector:
    """Strikes the workers of ``fleets`` (by logical id) on the timers of ``faults``, each on a thread of its
    own that ends when ``stopping`` is set; victims are drawn with ``rng``."""

    def __init__(
        self, faults: Faults, fleets: Mapping[str, LocalFleet], *, rng: random.Random, stopping: threading.Event
    ) -> None:
        self.faults = faults
        self.fleets = fleets
        self.rng = rng
        self.stopping = stopping

    def start(self) -> None:
        if self.faults.kill_worker_every:
            threading.Thread(target=self._kill_workers, name="fault-kill", daemon=True).start()
        if self.faults.spot_notice_after is not None:
            args = (self.faults.spot_notice_after, "spot")
            threading.Thread(target=self._notify, args=args, name="fault-spot", daemon=True).start()
        if self.faults.lifecycle_after is not None:
            args = (self.faults.lifecycle_after, "lifecycle")
            threading.Thread(target=self._notify, args=args, name="fault-lifecycle", daemon=True).start()

    def _kill_workers(self) -> None:
        while not self.stopping.wait(self.faults.kill_worker_every):
            fleets = list(self.fleets.values())
            if fleets:
                victim = self.rng.choice(fleets).kill_one(self.rng)
                if victim:
                    self.faults.events.append(f"killed {victim} (kill -9)")

    def _notify(self, after: float, how: str) -> None:
        """After ``after`` s, a spot notice (``spot``) or termination lifecycle action to one live worker."""
        if self.stopping.wait(after):
            return
        for fleet in self.fleets.values():
            victim = fleet.spot_notice(self.rng) if how == "spot" else fleet.lifecycle_termination(self.rng)
            if victim:
                what = "spot interruption notice to" if how == "spot" else "termination lifecycle action on"
                self.faults.events.append(f"{what} {victim}")
                return
