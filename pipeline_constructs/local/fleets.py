"""SpotWorkerFleets locally: N worker processes per Auto Scaling group, running the shipped runtime.

The worker environment is read from the launch template's user data (the ``/etc/pipeline-worker.env``
block the construct writes) and the code from the same S3 assets the instances download, so the local
workers run exactly what an instance would. Like systemd (``Restart=on-failure``) a crashed worker is
restarted; like the Auto Scaling group, a worker that left after a spot notice or a termination lifecycle
action is replaced. Workers reach a local Auto Scaling endpoint (:mod:`.autoscaling`) to complete the action.

As on an instance, a worker directory's ``requirements.lock`` is installed from its ``wheels/`` (``pip install
--no-index --find-links wheels --require-hashes``), into an environment of its own cached by the lock's hash
under ``$PIPELINE_LOCAL_CACHE`` (default ``~/.cache/pipeline-constructs``) and reused by later runs; what this
interpreter already has at the locked version is reused, not installed again.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import re
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pipeline_constructs.local import free_port
from pipeline_constructs.local.imds import FakeInstanceMetadata

#: One worker variable a line of the user data: its value base64-encoded, so that no value can break out.
ENV_LINE = re.compile(r"^pipeline_env ([A-Za-z_][A-Za-z0-9_]*) '([A-Za-z0-9+/=]*)'$", re.M)
DOWNLOAD = re.compile(r"aws s3 cp 's3://[^/]+/([0-9a-f]{64})\.zip' '(/tmp/[a-z]+\.zip)'")

#: A worker's main: the runtime as ``python -m pipeline_worker`` runs it, and a lifeline to the local run. Its
#: stdin is a pipe only the run holds open: at end of file the run is gone, even by ``kill -9`` (no cleanup),
#: and the worker stops as at the run's end (SIGTERM) instead of running on against an emulator that is gone.
#: The raw descriptor, not ``sys.stdin``: a daemon thread blocked in its buffer can abort the interpreter's exit.
WORKER_MAIN = """
import os, runpy, signal, threading

def end_with_the_local_run():
    while os.read(0, 1):
        pass
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=end_with_the_local_run, name="local-run-lifeline", daemon=True).start()
runpy.run_module("pipeline_worker", run_name="__main__", alter_sys=True)
"""


#: The longest socket path the fork server of a worker's task processes may bind: macOS's limit (Linux's is 107),
#: less what multiprocessing adds to the temporary folder (``/pymp-XXXXXXXX/listener-XXXXXXXX``).
_SOCKET_PATH_LIMIT = 103
_MULTIPROCESSING_SUFFIX = len("/pymp-abcdefgh/listener-abcdefgh")


def workers_temp_folder() -> Path:
    """A new folder for a fleet's workers' temporary files, in this process's temporary folder; in the system's
    ``/tmp`` when that one is too deep for the fork server's socket (``AF_UNIX path too long``: every worker
    would crash at start, as under macOS's ``/var/folders/...`` or a test's nested folders)."""
    folder = Path(tempfile.mkdtemp(prefix="pwt-"))
    if len(str(folder)) + _MULTIPROCESSING_SUFFIX <= _SOCKET_PATH_LIMIT:
        return folder
    folder.rmdir()
    return Path(tempfile.mkdtemp(prefix="pwt-", dir="/tmp"))


def parse_user_data(script: str) -> tuple[dict[str, str], dict[str, str]]:
    """(worker environment, local zip name -> asset hash) from a fleet's user data script."""
    found = ENV_LINE.findall(script)
    if not found:
        raise ValueError("user data writes no /etc/pipeline-worker.env: not a SpotWorkerFleet launch template")
    environment = {name: base64.b64decode(value).decode() for name, value in found}
    downloads = {Path(local).stem: asset for asset, local in DOWNLOAD.findall(script)}
    return environment, downloads


class WorkerRequirementsError(RuntimeError):
    """A worker directory's locked requirements did not install: the message names the fleet, the error and
    the log of the install."""


def worker_python(task_dir: Path, *, fleet: str, log_dir: Path) -> str:
    """The interpreter the fleet's workers run with: this one, or with a ``requirements.lock`` in the worker
    directory, that of its cached environment (installed first when no earlier run did)."""
    lock = task_dir / "requirements.lock"
    if not lock.is_file():
        return sys.executable
    key = hashlib.sha256(lock.read_bytes() + sys.executable.encode()).hexdigest()[:16]
    venv = _cache_dir() / "worker-venvs" / key
    python = venv / "bin" / "python"
    if (venv / "installed").is_file():
        return str(python)
    log = log_dir / f"requirements-{fleet.rsplit('/', 1)[-1]}.log"
    venv.parent.mkdir(parents=True, exist_ok=True)
    # Built beside its final place and renamed: runs (and fleets) sharing the cache never see half of one.
    building = Path(tempfile.mkdtemp(prefix=f"{key}-", dir=venv.parent))
    try:
        with log.open("w") as output:
            _install(lock, building, output)
    except subprocess.CalledProcessError:
        shutil.rmtree(building, ignore_errors=True)
        raise WorkerRequirementsError(
            f"fleet {fleet}: its worker requirements did not install: {_install_error(log)} (log: {log})"
        ) from None
    (building / "installed").touch()
    try:
        building.rename(venv)
    except OSError:  # another run installed the same lock meanwhile: use its environment
        shutil.rmtree(building, ignore_errors=True)
    return str(python)


def _install(lock: Path, venv: Path, output: IO[str]) -> None:
    """A virtual environment at ``venv`` that sees this interpreter's packages (as ``--system-site-packages``
    would), with the lock installed from the wheels beside it, as boot does; what it says to ``output``."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], stdout=output, stderr=subprocess.STDOUT, check=True
    )
    (site_packages,) = venv.glob("lib/python*/site-packages")
    # Appended after the environment's own packages, so a locked version installed there wins.
    parents = "; ".join(f"site.addsitedir({path!r})" for path in site.getsitepackages())
    (site_packages / "local-run-parent.pth").write_text(f"import site; {parents}\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run(
        [*pip, "--no-index", "--find-links", str(lock.parent / "wheels"), "--require-hashes", "-r", str(lock)],
        stdout=output,
        stderr=subprocess.STDOUT,
        check=True,
    )


def _install_error(log: Path) -> str:
    """The first sentence of pip's first ``ERROR:`` line in ``log``, else the log's last line."""
    lines = [line.strip() for line in log.read_text().splitlines() if line.strip()]
    error = next((line for line in lines if line.startswith("ERROR:")), lines[-1] if lines else "no output")
    return error.split(". ", 1)[0]


def _cache_dir() -> Path:
    return Path(os.environ.get("PIPELINE_LOCAL_CACHE") or Path.home() / ".cache" / "pipeline-constructs")


def last_line(log: Path) -> str:
    """The last line a process wrote to its log (a crashing process's error), or ''."""
    try:
        with log.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 4096))
            lines = handle.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.strip()), "")


@dataclass
class RestartReason:
    """Why workers of a fleet were restarted: how many times, and the log of the first."""

    count: int
    log: str


@dataclass
class WorkerProcess:
    number: int
    process: subprocess.Popen
    imds: FakeInstanceMetadata | None
    log: Path
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
        # The workers' temporary files, removed with the run, as systemd's PrivateTmp removes them on an instance:
        # a worker ends by os._exit, which leaves multiprocessing's pymp-* folder behind.
        self._tmp = workers_temp_folder()
        self.workers: list[WorkerProcess] = []
        self.started_count = 0
        self.restarts = 0
        self.kills = 0
        self.spot_notices = 0
        self.lifecycle_terminations = 0
        self.replacements = 0
        #: Why workers were restarted: each reason (exit code, the worker's last log line) with its count and
        #: the log of its first occurrence.
        self.restart_reasons: dict[str, RestartReason] = {}
        self.python = sys.executable
        self._stopping = False
        self._leaving: list[WorkerProcess] = []  # scaled in: stopping on their own
        self._lock = threading.Lock()

    @property
    def group_name(self) -> str:
        """The Auto Scaling group's name as its workers read it from their instance tags."""
        return self._group or self.name.replace("/", "-")

    @property
    def short_name(self) -> str:
        """The fleet's construct id (``Statistics``), as commands name it."""
        return self.name.rsplit("/", 1)[-1]

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
                "TMPDIR": str(self._tmp),
                "PIPELINE_WORKER_ID": f"{self.name.rsplit('/', 1)[-1].lower()}-{number}",
                "PIPELINE_SPOT_WATCH": "on" if imds else "off",
                "PIPELINE_SCALE_IN_PROTECTION": "off",
            }
        )
        if imds:
            environment |= {"PIPELINE_METADATA_ENDPOINT": imds.endpoint, "PIPELINE_SPOT_POLL_SECONDS": "1"}
        if environment.get("PIPELINE_TASK_KIND") == "http":
            # On AWS each worker's app has an instance (and a loopback) of its own; here the workers share one.
            environment["PIPELINE_HTTP_PORT"] = str(free_port())
        log_path = self.log_dir / f"worker-{environment['PIPELINE_WORKER_ID']}.log"
        with log_path.open("a") as log:
            process = subprocess.Popen(
                [self.python, "-c", WORKER_MAIN],
                cwd=self.task_dir,
                env=environment,
                stdin=subprocess.PIPE,  # the lifeline (:data:`WORKER_MAIN`): never written, closed at the run's end
                stdout=log,
                stderr=log,
            )
        return WorkerProcess(number, process, imds, log_path)

    def start(self) -> None:
        """Install the worker directory's requirements (:func:`worker_python`), then start the workers."""
        self.python = worker_python(self.task_dir, fleet=self.name, log_dir=self.log_dir)
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
                        self._record_restart(worker, code)
                    self.workers[index] = self._spawn()
            time.sleep(0.5)

    def _record_restart(self, worker: WorkerProcess, code: int) -> None:
        """Keep why a worker exited: its exit code (a signal's name) and the last line of its log."""
        how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        reason = f"{how}: {last_line(worker.log)}" if code > 0 else how
        self.restart_reasons.setdefault(reason, RestartReason(0, str(worker.log))).count += 1

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
        shutil.rmtree(self._tmp, ignore_errors=True)
        return codes
