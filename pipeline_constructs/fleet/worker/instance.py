"""The worker's duties towards its EC2 instance and Auto Scaling group.

- Watch the instance metadata (IMDSv2) for a spot interruption notice and for a termination lifecycle
  action (``autoscaling/target-lifecycle-state`` turning ``Terminated``: scale-in, capacity rebalance, an
  instance refresh or rolling update); either asks the worker to stop and release its tasks at once.
- After such a stop, complete the group's termination lifecycle action, so the instance goes without
  waiting for the hook's timeout.
- Protect the instance from scale-in while it works on a task, and lift that once it has been idle a while.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from .config import WorkerConfig
from .metadata import InstanceMetadata

log = logging.getLogger("pipeline.worker")

IDLE_UNPROTECT_SECONDS = 30.0
SPOT_NOTICE = "spot interruption notice"
LIFECYCLE_TERMINATION = "lifecycle termination"
#: Waits before each new try of CompleteLifecycleAction (about 7 s in all, well inside a stop's budget).
LIFECYCLE_RETRY_WAITS = (1.0, 2.0, 4.0)


class InstanceDuties:
    def __init__(self, config: WorkerConfig, *, metadata: InstanceMetadata | None, autoscaling: Any | None) -> None:
        self.config = config
        self.metadata = metadata
        self.autoscaling = autoscaling
        self.available = False
        self.protection_enabled = False
        self._protected = False
        self._busy_since_idle = 0.0
        self._instance_id: str | None = None
        self._group: str | None = None
        self._lock = threading.Lock()

    def start(self, stop: Callable[[str], None], stopping: threading.Event) -> None:
        """Find out what the instance offers, then watch it on a thread of its own."""
        self.available = self._metadata_available()
        self.protection_enabled = (
            self.available and self.autoscaling is not None and self.config.scale_in_protection != "off"
        )
        if self.metadata is not None and self.available and self.config.spot_watch != "off":
            threading.Thread(
                target=self._watch, args=(self.metadata, stop, stopping), name="instance-watch", daemon=True
            ).start()

    def _metadata_available(self) -> bool:
        if self.metadata is None:
            return False
        if self.config.spot_watch == "on":
            return True
        available = self.metadata.available()
        if not available:
            log.info("no instance metadata service: no spot notices, no lifecycle hooks, no scale-in protection")
        return available

    def _watch(self, metadata: InstanceMetadata, stop: Callable[[str], None], stopping: threading.Event) -> None:
        while not stopping.is_set():
            reason = None
            try:
                notice = metadata.spot_interruption()
                if notice:
                    log.warning("spot interruption notice", extra={"notice": notice})
                    reason = SPOT_NOTICE
                elif metadata.target_lifecycle_state() == "Terminated":
                    log.warning("termination lifecycle action: draining")
                    reason = LIFECYCLE_TERMINATION
            except Exception:
                log.exception("instance metadata poll failed")
            if reason:
                stop(reason)
                return
            stopping.wait(self.config.spot_poll_seconds)

    def _identity(self) -> tuple[str | None, str | None]:
        if self._instance_id is None and self.metadata is not None:
            self._instance_id = self.metadata.instance_id()
            self._group = self.metadata.auto_scaling_group()
        return self._instance_id, self._group

    def complete_lifecycle_action(self) -> None:
        """Tell the group the instance is drained (CONTINUE), rather than let the hook time out: tried again
        after :data:`LIFECYCLE_RETRY_WAITS` when the call fails past the SDK's retries (a throttle burst, a
        5xx), since otherwise the instance, drained, is billed until the hook's timeout."""
        if not self.config.lifecycle_hook or self.autoscaling is None or self.metadata is None:
            return
        waits = iter(LIFECYCLE_RETRY_WAITS)
        while True:
            try:
                instance_id, group = self._identity()
                self.autoscaling.complete_lifecycle_action(
                    LifecycleHookName=self.config.lifecycle_hook,
                    AutoScalingGroupName=group,
                    InstanceId=instance_id,
                    LifecycleActionResult="CONTINUE",
                )
                log.info(
                    "lifecycle action completed", extra={"hook": self.config.lifecycle_hook, "instance": instance_id}
                )
                return
            except Exception as error:
                wait = next(waits, None)
                if wait is None or _no_action_to_complete(error):
                    log.exception("completing the lifecycle action failed; the hook's timeout will let the instance go")
                    return
                log.warning("completing the lifecycle action failed; trying again", extra={"error": str(error)})
                time.sleep(wait)

    # ---------------------------------------------------------------- scale-in protection

    def update_protection(self, busy: bool) -> None:
        now = time.monotonic()
        if busy:
            self._busy_since_idle = now
        elif self._protected and now - self._busy_since_idle >= IDLE_UNPROTECT_SECONDS:
            self.set_protection(False)

    def set_protection(self, protect: bool) -> None:
        """Scale-in protection while busy, so the ASG never terminates a worker in the middle of a task."""
        if protect == self._protected or not self.protection_enabled or self.autoscaling is None:
            return
        with self._lock:
            if protect == self._protected:
                return
            self._protected = protect
        try:
            instance_id, group = self._identity()
            if not instance_id or not group:
                return
            self.autoscaling.set_instance_protection(
                InstanceIds=[instance_id], AutoScalingGroupName=group, ProtectedFromScaleIn=protect
            )
        except Exception:
            log.exception("scale-in protection change failed", extra={"protect": protect})


def _no_action_to_complete(error: Exception) -> bool:
    """The group has no action waiting for this instance (already completed, or timed out): nothing to retry."""
    response = getattr(error, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    return code == "ValidationError" and "No active Lifecycle Action" in str(error)
