"""A small AWS Batch endpoint: SubmitJob, DescribeJobs, ListJobs and TerminateJob over the template's
job definitions, each job a local process running its image's code, with retries, timeouts and events.

Point boto3 at it with ``AWS_ENDPOINT_URL_BATCH``. A job's command comes from its definition's ``Command``
or its image's Dockerfile (``ENTRYPOINT``/``CMD``), with paths the Dockerfile ``COPY``s into the image
mapped back to the image directory, and ``python`` to this interpreter.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from pipeline_constructs.local import serve_in_background
from pipeline_constructs.local.resolver import DEFAULT_ACCOUNT

TERMINAL = ("SUCCEEDED", "FAILED")


@dataclass
class JobDefinitionSpec:
    arn: str
    name: str
    environment: dict[str, str]
    image_dir: Path | None
    command: list[str] | None
    vcpus: int = 1
    attempts: int = 1
    evaluate_on_exit: list[dict[str, str]] = field(default_factory=list)
    timeout_seconds: int | None = None
    #: The image as the job definition names it (a registry image's ``repo:tag``).
    image: str = ""


class JobCannotStart(Exception):
    """The job's container cannot start here (as ``CannotStartContainerError`` on AWS): the message says why."""


def dockerfile_command(image_dir: Path) -> tuple[list[str], list[str], dict[str, Path]]:
    """(entrypoint, cmd, image path -> local path) read from the image's Dockerfile."""
    entrypoint: list[str] = []
    cmd: list[str] = []
    copies: dict[str, Path] = {}
    workdir = "/"
    text = (image_dir / "Dockerfile").read_text()
    logical_lines = text.replace("\\\n", " ").splitlines()
    for line in logical_lines:
        parts = line.strip().split(None, 1)
        if len(parts) < 2 or parts[0].startswith("#"):
            continue
        instruction, argument = parts[0].upper(), parts[1].strip()
        if instruction == "WORKDIR":
            workdir = argument if argument.startswith("/") else f"{workdir.rstrip('/')}/{argument}"
        elif instruction == "COPY" and not argument.startswith("--from"):
            *sources, destination = shlex.split(argument)
            sources = [s for s in sources if not s.startswith("--")]
            target = destination if destination.startswith("/") else f"{workdir.rstrip('/')}/{destination}"
            for source in sources:
                local = (image_dir / source).resolve()
                if destination.endswith("/") or len(sources) > 1 or source == ".":
                    key = target.rstrip("/") + ("/" + Path(source).name if source != "." else "")
                else:
                    key = target
                copies[key] = local
        elif instruction in ("ENTRYPOINT", "CMD"):
            words = json.loads(argument) if argument.startswith("[") else ["/bin/sh", "-c", argument]
            if instruction == "ENTRYPOINT":
                entrypoint = words
            else:
                cmd = words
    return entrypoint, cmd, copies


def local_argv(argv: list[str], copies: dict[str, Path]) -> list[str]:
    translated = []
    for word in argv:
        if word in ("python", "python3") or word.startswith("/usr/local/bin/python"):
            translated.append(sys.executable)
            continue
        for image_path, local in sorted(copies.items(), key=lambda item: -len(item[0])):
            if word == image_path or word.startswith(image_path.rstrip("/") + "/"):
                word = str(local) + word[len(image_path) :]
                break
        translated.append(word)
    return translated


@dataclass
class LocalJob:
    job_id: str
    name: str
    queue: str
    definition: JobDefinitionSpec
    environment: dict[str, str]
    parameters: dict[str, str]
    array_size: int | None = None
    array_index: int | None = None
    parent: LocalJob | None = None
    status: str = "SUBMITTED"
    status_reason: str = ""
    attempts: list[dict[str, Any]] = field(default_factory=list)
    created_at: int = field(default_factory=lambda: int(time.time() * 1000))
    started_at: int | None = None
    stopped_at: int | None = None
    children: list[LocalJob] = field(default_factory=list)
    process: subprocess.Popen | None = None
    terminate_requested: str = ""
    #: The log of the job's latest attempt, once one ran.
    log_path: Path | None = None

    @property
    def arn(self) -> str:
        # The queue's region and account (a job runs where its queue is).
        _, _, _, region, account, *_ = self.queue.split(":") if self.queue.startswith("arn:") else [""] * 5 + [""]
        return f"arn:aws:batch:{region or 'us-east-1'}:{account or DEFAULT_ACCOUNT}:job/{self.job_id}"

    def log_name(self, attempt: int) -> str:
        """The file name of the log of the job's attempt number ``attempt``. An array's children share its
        name and the start of its id, so each child's index is in its name: children never write one file."""
        child = f"-child{self.array_index}" if self.array_index is not None else ""
        return f"job-{self.name}-{self.job_id[:8]}{child}-{attempt}.log"

    def detail(self) -> dict[str, Any]:
        environment = [{"name": k, "value": v} for k, v in (self.definition.environment | self.environment).items()]
        detail: dict[str, Any] = {
            "jobArn": self.arn,
            "jobName": self.name,
            "jobId": self.job_id,
            "jobQueue": self.queue,
            "status": self.status,
            "statusReason": self.status_reason,
            "attempts": self.attempts,
            "createdAt": self.created_at,
            "jobDefinition": self.definition.arn,
            "parameters": self.parameters,
            "container": {"environment": environment, "vcpus": self.definition.vcpus},
            "retryStrategy": {"attempts": self.definition.attempts},
            "dependsOn": [],
            "tags": {},
        }
        if self.started_at:
            detail["startedAt"] = self.started_at
        if self.stopped_at:
            detail["stoppedAt"] = self.stopped_at
        if self.array_size:
            detail["arrayProperties"] = {"size": self.array_size}
        if self.array_index is not None:
            detail["arrayProperties"] = {"index": self.array_index}
        return detail


class JobLauncher:
    """Runs one attempt of a job as a local process: its image's entrypoint and command (the definition's
    ``Command`` replacing the Dockerfile's ``CMD``) with image paths mapped back to the image directory, the
    job's environment over ``base_environment``, a log per attempt in ``log_dir``, the attempt timeout. A job
    of a step in ``fail_steps`` fails instead (exit 3), an injected fault."""

    def __init__(self, *, base_environment: dict[str, str], log_dir: Path, fail_steps: set[str]) -> None:
        self.base_environment = base_environment
        self.log_dir = log_dir
        self.fail_steps = fail_steps

    def argv(self, job: LocalJob) -> tuple[list[str], Path]:
        """(the command line, its working directory) of the job's container, run locally; raises
        :class:`JobCannotStart` when a registry image's command does not exist on this machine."""
        spec = job.definition
        step = (spec.environment | job.environment).get("PIPELINE_STEP", spec.name)
        if step in self.fail_steps:
            # Injected fault: the step's code "crashes" with an application error (exit 3).
            return [sys.executable, "-c", "import sys; print('injected failure'); sys.exit(3)"], self.log_dir
        if spec.image_dir is None:
            return self._registry_argv(spec), self.log_dir
        entrypoint, cmd, copies = dockerfile_command(spec.image_dir)
        argv = entrypoint + (spec.command or cmd)  # a definition's Command replaces CMD, as in Docker
        return local_argv(argv, copies), spec.image_dir

    @staticmethod
    def _registry_argv(spec: JobDefinitionSpec) -> list[str]:
        """A registry image's command, run as it is when this machine has it (``python`` is this interpreter)."""
        not_local = f"image {spec.image or spec.name} is not built from a local directory and"
        if not spec.command:
            raise JobCannotStart(f"{not_local} its job definition names no command to run here")
        argv = local_argv(spec.command, {})
        if shutil.which(argv[0]) is None:
            raise JobCannotStart(f"{not_local} its command {argv[0]} does not exist here")
        return argv

    def run(self, job: LocalJob, attempt: int) -> tuple[int, str]:
        """(exit code, reason) of the job's attempt number ``attempt``; the reason is empty on success."""
        argv, cwd = self.argv(job)
        environment = (
            dict(os.environ)
            | self.base_environment
            | job.definition.environment
            | job.environment
            | {
                "AWS_BATCH_JOB_ID": job.job_id,
                "AWS_BATCH_JOB_ATTEMPT": str(attempt),
                "AWS_BATCH_JQ_NAME": job.queue.rsplit("/", 1)[-1],
            }
        )
        log_path = self.log_dir / job.log_name(attempt)
        job.log_path = log_path
        with log_path.open("w") as log:
            job.process = subprocess.Popen(argv, cwd=cwd, env=environment, stdout=log, stderr=subprocess.STDOUT)
            try:
                code = job.process.wait(timeout=job.definition.timeout_seconds)
            except subprocess.TimeoutExpired:
                job.process.kill()
                job.process.wait()
                return 137, "Job attempt duration exceeded timeout"
        if job.terminate_requested:
            return code or 143, job.terminate_requested
        return code, "" if code == 0 else exited_reason(code)


def exited_reason(exit_code: int) -> str:
    """The status reason AWS gives a job whose container exited non-zero, with the exit code."""
    return f"Essential container in task exited (exit code {exit_code})"


def retry_action(spec: JobDefinitionSpec, exit_code: int, reason: str) -> str:
    """``RETRY`` or ``EXIT``: what the first matching rule of the definition's ``EvaluateOnExit`` says about
    a failed attempt (retry when none matches)."""
    for rule in spec.evaluate_on_exit:
        checks = []
        exit_codes = _rule_field(rule, "OnExitCode")
        if exit_codes is not None:
            checks.append(fnmatch.fnmatch(str(exit_code), exit_codes))
        for field_name in ("OnStatusReason", "OnReason"):
            reasons = _rule_field(rule, field_name)
            if reasons is not None:
                checks.append(fnmatch.fnmatch(reason, reasons))
        if checks and all(checks):
            return str(rule.get("Action", rule.get("action", "RETRY"))).upper()
    return "RETRY"


def _rule_field(rule: dict[str, str], name: str) -> str | None:
    """A field of an EvaluateOnExit rule, spelled as in the template (``OnExitCode``) or the API (``onExitCode``)."""
    return rule.get(name, rule.get(name[0].lower() + name[1:]))


#: What ListJobs gives of each job.
SUMMARY_FIELDS = (
    "jobArn",
    "jobId",
    "jobName",
    "createdAt",
    "status",
    "statusReason",
    "startedAt",
    "stoppedAt",
    "jobDefinition",
    "arrayProperties",
)


class LocalBatch:
    """Job queue semantics for the template's definitions; state changes go to ``emit`` as Batch events."""

    def __init__(
        self,
        definitions: dict[str, JobDefinitionSpec],
        queues: set[str],
        *,
        base_environment: dict[str, str],
        emit: Callable[[dict[str, Any]], object],
        log_dir: Path,
        region: str,
        max_parallel: int = 4,
        fail_steps: set[str] | None = None,
    ) -> None:
        self.definitions = definitions
        self.queues = queues
        self.emit = emit
        self.region = region
        self.launcher = JobLauncher(base_environment=base_environment, log_dir=log_dir, fail_steps=fail_steps or set())
        self.jobs: dict[str, LocalJob] = {}
        self._lock = threading.RLock()
        self._slots = threading.Semaphore(max_parallel)
        self._threads: list[threading.Thread] = []
        self.server = _BatchServer(self)
        serve_in_background(self.server, "local-batch")

    # ------------------------------------------------------------------ API

    def _definition(self, reference: str) -> JobDefinitionSpec:
        if reference in self.definitions:
            return self.definitions[reference]
        family = reference.rsplit(":", 1)[0] if reference.rsplit(":", 1)[-1].isdigit() else reference
        for spec in self.definitions.values():
            if family in (spec.name, spec.arn.rsplit(":", 1)[0]):
                return spec
        raise KeyError(f"job definition {reference} not found")

    def submit(self, request: dict[str, Any]) -> dict[str, str]:
        queue = request.get("jobQueue", "")
        if queue not in self.queues and not any(q.endswith(f"/{queue}") for q in self.queues):
            raise KeyError(f"job queue {queue} not found")
        definition = self._definition(request.get("jobDefinition", ""))
        overrides = request.get("containerOverrides") or {}
        environment = {e["name"]: e.get("value", "") for e in overrides.get("environment", [])}
        job = LocalJob(
            job_id=str(uuid.uuid4()),
            name=request["jobName"],
            queue=next((q for q in self.queues if q == queue or q.endswith(f"/{queue}")), queue),
            definition=definition,
            environment=environment,
            parameters=request.get("parameters") or {},
            array_size=(request.get("arrayProperties") or {}).get("size"),
        )
        with self._lock:
            self.jobs[job.job_id] = job
        self._transition(job, "SUBMITTED")
        thread = threading.Thread(target=self._run, args=(job,), name=f"job-{job.name[:30]}", daemon=True)
        self._threads.append(thread)
        thread.start()
        return {"jobArn": job.arn, "jobName": job.name, "jobId": job.job_id}

    def describe(self, job_ids: list[str]) -> list[dict[str, Any]]:
        with self._lock:
            return [self.jobs[i].detail() for i in job_ids if i in self.jobs]

    def list(
        self, queue: str | None, status: str | None, names: list[str] | None = None, array_job: str | None = None
    ) -> list[dict[str, Any]]:
        """Like ListJobs: by status, or (a JOB_NAME filter, which ignores the status) by exact name or ``prefix*``;
        with ``array_job``, that array's children (by status) instead of the queue's jobs."""
        with self._lock:
            if array_job is not None:
                parent = self.jobs.get(array_job)
                jobs = [c for c in parent.children if not status or c.status == status] if parent else []
                return [{k: v for k, v in j.detail().items() if k in SUMMARY_FIELDS} for j in jobs]
            jobs = [j for j in self.jobs.values() if j.parent is None]
        if queue:
            jobs = [j for j in jobs if j.queue == queue or j.queue.endswith(f"/{queue}")]
        if names is not None:
            jobs = [j for j in jobs if any(_name_matches(j.name, pattern) for pattern in names)]
        elif status:
            jobs = [j for j in jobs if j.status == status]
        return [{k: v for k, v in j.detail().items() if k in SUMMARY_FIELDS} for j in jobs]

    def terminate(self, job_id: str, reason: str) -> None:
        with self._lock:
            job = self.jobs.get(job_id)
        if job is None:
            raise KeyError(f"job {job_id} not found")
        job.terminate_requested = reason or "Terminated by TerminateJob"
        for target in [job, *job.children]:
            if target.process and target.process.poll() is None:
                target.process.send_signal(signal.SIGTERM)

    # ------------------------------------------------------------------ running

    def _transition(self, job: LocalJob, status: str, reason: str = "") -> None:
        job.status, job.status_reason = status, reason or job.status_reason
        if status == "RUNNING" and job.started_at is None:
            job.started_at = int(time.time() * 1000)
        if status in TERMINAL:
            job.stopped_at = int(time.time() * 1000)
        self.emit(
            {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Batch Job State Change",
                "source": "aws.batch",
                "account": job.arn.split(":")[4],
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "region": self.region,
                "resources": [job.arn],
                "detail": job.detail(),
            }
        )

    def _run(self, job: LocalJob) -> None:
        self._failing_on_error(job, self._run_job)

    def _failing_on_error(self, job: LocalJob, run: Callable[[LocalJob], None]) -> None:
        """``run(job)`` in a job's thread: whatever it raises fails the job with the error as its reason,
        instead of dying with the thread and leaving the job RUNNING."""
        try:
            run(job)
        except Exception as error:
            if job.process is not None and job.process.poll() is None:
                job.process.kill()
            first_line = (str(error).strip().splitlines() or [""])[0]
            self._transition(job, "FAILED", f"local run error: {type(error).__name__}: {first_line}")

    def _run_job(self, job: LocalJob) -> None:
        for status in ("PENDING", "RUNNABLE"):
            if job.terminate_requested:
                break
            self._transition(job, status)
        if job.terminate_requested:
            self._transition(job, "FAILED", job.terminate_requested)
            return
        if job.array_size:
            self._run_array(job)
            return
        with self._slots:
            self._transition(job, "STARTING")
            self._transition(job, "RUNNING")
            succeeded, reason = self._attempts(job)
        self._transition(job, "SUCCEEDED" if succeeded else "FAILED", reason)

    def _run_array(self, parent: LocalJob) -> None:
        self._transition(parent, "RUNNING")
        for index in range(parent.array_size or 0):
            child = LocalJob(
                job_id=f"{parent.job_id}:{index}",
                name=parent.name,
                queue=parent.queue,
                definition=parent.definition,
                environment=parent.environment | {"AWS_BATCH_JOB_ARRAY_INDEX": str(index)},
                parameters=parent.parameters,
                array_index=index,
                parent=parent,
            )
            parent.children.append(child)
            with self._lock:
                self.jobs[child.job_id] = child
        threads = [threading.Thread(target=self._run_child, args=(c,), daemon=True) for c in parent.children]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        failed = [c for c in parent.children if c.status != "SUCCEEDED"]
        reason = f"{len(failed)} of {len(parent.children)} child jobs failed" if failed else ""
        self._transition(parent, "FAILED" if failed else "SUCCEEDED", reason)

    def _run_child(self, child: LocalJob) -> None:
        self._failing_on_error(child, self._run_child_job)

    def _run_child_job(self, child: LocalJob) -> None:
        # As on AWS, each child goes through the states a job does, each change an event with its index.
        for status in ("PENDING", "RUNNABLE"):
            self._transition(child, status)
        with self._slots:
            self._transition(child, "STARTING")
            self._transition(child, "RUNNING")
            succeeded, reason = self._attempts(child)
        self._transition(child, "SUCCEEDED" if succeeded else "FAILED", reason)

    def _attempts(self, job: LocalJob) -> tuple[bool, str]:
        spec = job.definition
        for attempt in range(1, spec.attempts + 1):
            if job.terminate_requested:
                return False, job.terminate_requested
            try:
                code, reason = self.launcher.run(job, attempt)
            except JobCannotStart as error:
                # Trying again cannot make the command exist: the job fails at once, saying why.
                job.attempts.append({"container": {"reason": str(error)}, "statusReason": str(error)})
                return False, str(error)
            job.attempts.append({"container": {"exitCode": code, "reason": reason}, "statusReason": reason})
            if code == 0:
                return True, ""  # AWS gives a succeeded job no reason
            action = retry_action(spec, code, reason)
            if action == "EXIT" or attempt == spec.attempts:
                return False, reason or exited_reason(code)
        return False, "attempts exhausted"

    def busy(self) -> bool:
        with self._lock:
            return any(j.status not in TERMINAL for j in self.jobs.values())

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        for job in list(self.jobs.values()):
            if job.process and job.process.poll() is None:
                job.process.kill()
        self.server.shutdown()


class _BatchServer(ThreadingHTTPServer):
    """The local Batch endpoint of one :class:`LocalBatch`."""

    daemon_threads = True

    def __init__(self, batch: LocalBatch) -> None:
        super().__init__(("127.0.0.1", 0), _BatchRequestHandler)
        self.batch = batch


class _BatchRequestHandler(BaseHTTPRequestHandler):
    """Batch's REST-JSON API (``POST /v1/submitjob``...) over the server's :class:`LocalBatch`."""

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        batch = cast(_BatchServer, self.server).batch
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        reply: dict[str, Any]
        try:
            if self.path == "/v1/submitjob":
                reply = batch.submit(body)
            elif self.path == "/v1/describejobs":
                reply = {"jobs": batch.describe(body.get("jobs", []))}
            elif self.path == "/v1/listjobs":
                names = [v for f in body.get("filters") or [] if f.get("name") == "JOB_NAME" for v in f["values"]]
                reply = {
                    "jobSummaryList": batch.list(
                        body.get("jobQueue"),
                        body.get("jobStatus"),
                        names if body.get("filters") else None,
                        array_job=body.get("arrayJobId"),
                    )
                }
            elif self.path == "/v1/terminatejob":
                batch.terminate(body.get("jobId", ""), body.get("reason", ""))
                reply = {}
            else:
                self._reply(404, {"message": f"{self.path} is not emulated locally"})
                return
        except KeyError as error:
            self._reply(400, {"__type": "ClientException", "message": str(error).strip("'\"")})
            return
        self._reply(200, reply)

    def _reply(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        if code >= 400:
            self.send_header("x-amzn-ErrorType", payload.get("__type", "ClientException"))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _name_matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern
