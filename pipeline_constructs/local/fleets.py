"""SpotWorkerFleets locally: N worker processes per Auto Scaling group, running the shipped runtime.

The worker environment is read from the launch template's user data (the ``/etc/pipeline-worker.env``
block the construct writes) and the code from the same S3 assets the instances download, so the local
workers run exactly what an instance would. Like systemd (``Restart=on-failure``) a crashed worker is
restarted; like the Auto Scaling group, a worker that left after a spot notice or a termination lifecycle
action is replaced. Workers reach a local Auto Scaling endpoint (:mod:`.autoscaling`) to complete the action.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline_constructs.local.imds import FakeInstanceMetadata

#: One worker variable a line of the user data: its value base64-encoded, so that no value can break out.
ENV_LINE = re.compile(r"^pipeline_env ([A-Za-z_][A-Za-z0-9_]*) '([A-Za-z0-9+/=]*)'$", re.M)
DOWNLOAD = re.compile(r"aws s3 cp 's3://[^/]+/([0-9a-f]{64})\.zip' '(/tmp/[a-z]+\.zip)'")


def parse_user_data(script: str) -> tuple[dict[str, str], dict[str, str]]:
    """(worker environment, local zip name -> asset hash) from a fleet's user data script."""
    found = ENV_LINE.findall(script)
    if not found:
        raise ValueError("user data writes no /etc/pipeline-worker.env: not a SpotWorkerFleet launch template")
    environment = {name: base64.b64decode(value).decode() for name, value in found}
    downloads = {Path(local).stem: asset for asset, local in DOWNLOAD.findall(script)}
    return environment, downloads


@dataclass
class WorkerProcess:
    number: int
    process: subprocess.Popen
    imds: FakeInstanceMetadata | None
    started: float = field(default_factory=time.monotonic)


class LocalFleet:
    def __init__(
        self,
        name: str,
        *,
        environment: dict[str, str],
        task_dir: Path,
        runtime_dir: Path,
        workers: int,
        log_dir: Path,
        watch_spot: bool,
        group: str | None = None,
    ) -> None:
        self.name = name
        self._group = group
        self.environment = environment
        self.task_dir = task_dir
        self.workers_wanted = workers
        self.log_dir = log_dir
        self.watch_spot = watch_spot
        # The runtime ships as package ``pipeline_worker``: a link to the asset gives it that name.
        self._lib = Path(tempfile.mkdtemp(prefix="pipeline-worker-lib-"))
        (self._lib / "pipeline_worker").symlink_to(runtime_dir.resolve(), target_is_directory=True)
        self.workers: list[WorkerProcess] = []
        self.started_count = 0
        self.restarts = 0
        self.kills = 0
        self.spot_notices = 0
        self.lifecycle_terminations = 0
        self.replacements = 0
        self._stopping = False
        self._leaving: list[WorkerProcess] = []  # scaled in: stopping on their own
        self._lock = threading.Lock()

    @property
    def group_name(self) -> str:
        """The Auto Scaling group's name as its workers read it from their instance tags."""
        return self._group or self.name.replace("/", "-")

    @property
    def queue_url(self) -> str:
        return self.environment["PIPELINE_QUEUE_URL"]

    @property
    def downstream_queue_url(self) -> str:
        return self.environment.get("PIPELINE_DOWNSTREAM_QUEUE_URL", "")

    def _spawn(self) -> WorkerProcess:
        self.started_count += 1
        number = self.started_count
        imds = (
            FakeInstanceMetadata(instance_id=f"i-local{number:04d}", group=self.group_name) if self.watch_spot else None
        )
        environment = (
            dict(os.environ)
            | self.environment
            | {
                "PYTHONPATH": os.pathsep.join([str(self._lib), str(self.task_dir)]),
                "PIPELINE_WORKER_ID": f"{self.name.rsplit('/', 1)[-1].lower()}-{number}",
                "PIPELINE_SPOT_WATCH": "on" if imds else "off",
                "PIPELINE_SCALE_IN_PROTECTION": "off",
            }
        )
        if imds:
            environment |= {"PIPELINE_METADATA_ENDPOINT": imds.endpoint, "PIPELINE_SPOT_POLL_SECONDS": "1"}
        log = (self.log_dir / f"worker-{environment['PIPELINE_WORKER_ID']}.log").open("a")
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline_worker"], cwd=self.task_dir, env=environment, stdout=log, stderr=log
        )
        return WorkerProcess(number, process, imds)

    def start(self) -> None:
        with self._lock:
            self.workers = [self._spawn() for _ in range(self.workers_wanted)]
        threading.Thread(target=self._supervise, name=f"fleet-{self.name}", daemon=True).start()

    def set_desired(self, count: int) -> None:
        """The group's desired capacity changed (a wake from zero, a scale-in): start or stop workers to match."""
        with self._lock:
            if self._stopping:
                return
            while len(self.workers) < count:
                self.workers.append(self._spawn())
            leaving, self.workers = self.workers[count:], self.workers[:count]
            self.workers_wanted = count
            self._leaving += leaving
        for worker in leaving:
            worker.process.terminate()

    def _supervise(self) -> None:
        """Restart crashed workers (systemd), replace workers that left after a spot notice (the ASG)."""
        while not self._stopping:
            with self._lock:
                for index, worker in enumerate(self.workers):
                    code = worker.process.poll()
                    if code is None or self._stopping:
                        continue
                    if worker.imds:
                        worker.imds.close()
                    if code == 0:
                        self.replacements += 1
                    else:
                        self.restarts += 1
                    self.workers[index] = self._spawn()
            time.sleep(0.5)

    def _strike(self, rng: random.Random, how: str) -> str | None:
        with self._lock:
            live = [w for w in self.workers if w.process.poll() is None and (w.imds or how == "kill")]
            if not live:
                return None
            victim = rng.choice(live)
            if how == "kill":
                victim.process.kill()
                self.kills += 1
            elif how == "spot" and victim.imds:
                victim.imds.interrupt()
                self.spot_notices += 1
            elif how == "lifecycle" and victim.imds:
                victim.imds.terminate_lifecycle()
                self.lifecycle_terminations += 1
            return f"{self.name} worker {victim.number}"

    def kill_one(self, rng: random.Random) -> str | None:
        """SIGKILL a random live worker mid-work (it is restarted; its tasks reappear after the timeout)."""
        return self._strike(rng, "kill")

    def spot_notice(self, rng: random.Random) -> str | None:
        """Issue a spot interruption notice to a random live worker (it releases its tasks and leaves)."""
        return self._strike(rng, "spot")

    def lifecycle_termination(self, rng: random.Random) -> str | None:
        """Start terminating a random live worker's instance, as scale-in or an instance refresh would (it
        releases its tasks, completes the lifecycle action and leaves)."""
        return self._strike(rng, "lifecycle")

    def stop(self, timeout: float = 30) -> list[int]:
        self._stopping = True
        with self._lock:
            self.workers += self._leaving
            for worker in self.workers:
                if worker.process.poll() is None:
                    worker.process.terminate()
            codes = []
            for worker in self.workers:
                try:
                    codes.append(worker.process.wait(timeout=timeout))
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    codes.append(worker.process.wait())
                if worker.imds:
                    worker.imds.close()
        shutil.rmtree(self._lib, ignore_errors=True)  # the link to the runtime, not the runtime
        return codes
