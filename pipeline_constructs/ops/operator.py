"""What the operator CLI does, without the CLI: find a pipeline, submit work, read status, redrive, start.

Resources are found through the stack's ``PipelineConstructsManifest`` output, from CloudFormation (a deployed stack,
by stack or environment name) or from a running local run's state file (``--local``).
"""

from __future__ import annotations

import json
import os
import socket
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
)

from pipeline_constructs.glue.handler import BATCH_CLIENT_CONFIG, SubmitGuard, job_name, stuck_reason, try_wake
from pipeline_constructs.local import LOCAL_STATE_FILE
from pipeline_constructs.ops.assembly import stack_option_hint

#: The output :class:`~pipeline_constructs.building_blocks.manifest.PipelineManifest` writes (named here too:
#: this module does not import the CDK), and the name it had before the library kept its ids under one namespace.
MANIFEST_OUTPUT = "PipelineConstructsManifest"
EARLIER_MANIFEST_OUTPUT = "PipelineManifest"
SQS_BATCH = 10
STATUS_TTL_SECONDS = 90 * 86400
#: How many children of a fan-out step ``pipeline status`` lists a run (failed first); the rest are counted.
CHILDREN_SHOWN = 50


class OperatorError(Exception):
    """Something the operator must fix, in one line."""


def explain(error: Exception, *, region: str | None = None, endpoint: str | None = None) -> OperatorError:
    """One actionable line for the AWS errors an operator meets."""
    if isinstance(error, OperatorError):
        return error
    if isinstance(error, NoCredentialsError | PartialCredentialsError):
        return OperatorError(
            "no AWS credentials found: set AWS_PROFILE (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY), "
            "or use --local against a local run"
        )
    if isinstance(error, NoRegionError):
        return OperatorError("no AWS region: pass --region or set AWS_REGION")
    if isinstance(error, EndpointConnectionError):
        return OperatorError(
            f"cannot reach {endpoint or error.kwargs.get('endpoint_url')}: check the region or the network"
        )
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        message = error.response.get("Error", {}).get("Message", "")
        if code in ("ExpiredToken", "ExpiredTokenException", "InvalidClientTokenId", "UnrecognizedClientException"):
            return OperatorError(f"AWS rejected the credentials ({code}): refresh them (aws sso login, new keys)")
        if code in ("AccessDenied", "AccessDeniedException"):
            return OperatorError(f"access denied: {message}")
        return OperatorError(f"{error.operation_name} failed: {code}: {message}")
    return OperatorError(str(error))


@dataclass
class Target:
    """A pipeline to operate on: its stack, manifest and AWS session (deployed or local)."""

    stack: str
    region: str
    manifest: dict[str, Any]
    session: boto3.session.Session
    endpoint: str | None = None
    batch_endpoint: str | None = None
    _clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            endpoint = self.batch_endpoint if service == "batch" and self.batch_endpoint else self.endpoint
            config = Config(retries={"mode": "standard"}, max_pool_connections=32)
            if service == "batch":  # SubmitGuard retries SubmitJob itself, looking first (a lost answer)
                config = config.merge(BATCH_CLIENT_CONFIG)
            self._clients[service] = self.session.client(service, endpoint_url=endpoint, config=config)
        return self._clients[service]

    def table(self, name: str) -> Any:
        return self.session.resource("dynamodb", endpoint_url=self.endpoint).Table(name)

    # ---------------------------------------------------------------- lookups

    def fleet(self, name: str | None) -> tuple[str, dict[str, Any]]:
        fleets = self.manifest.get("fleets", {})
        if not fleets:
            raise OperatorError(f"stack {self.stack} has no fleets")
        if name is None:
            upstream = [
                n
                for n, f in fleets.items()
                if f["queueUrl"] not in {g.get("downstreamQueueUrl") for g in fleets.values()}
            ]
            if len(upstream) == 1:
                return upstream[0], fleets[upstream[0]]
            raise OperatorError(f"name a fleet with --fleet; fleets: {', '.join(fleets)}")
        for full_name, fleet in fleets.items():
            if name.lower() in (full_name.lower(), full_name.rsplit("/", 1)[-1].lower()):
                return full_name, fleet
        raise OperatorError(f"no fleet named {name!r} in {self.stack}; fleets: {', '.join(fleets)}")

    def chain(self, name: str) -> dict[str, Any]:
        chains = self.manifest.get("chains", {})
        if name not in chains:
            raise OperatorError(f"no chain named {name!r} in {self.stack}; chains: {', '.join(chains) or 'none'}")
        return chains[name]


def _run_is_gone(state: dict[str, Any]) -> bool:
    """Whether the local run that wrote ``state`` is gone: its process is not there and its emulator refuses
    connections. Both, as a run in another PID namespace (a container) is not seen here but still answers."""
    pid = state.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False  # a state file without one (an older version's): its calls say what is wrong
    try:
        os.kill(pid, 0)
        return False
    except ProcessLookupError:
        pass
    except PermissionError:  # another user's process: it runs
        return False
    endpoint = urllib.parse.urlsplit(str(state.get("endpoint", "")))
    try:
        with socket.create_connection((endpoint.hostname or "127.0.0.1", endpoint.port or 80), timeout=2):
            return False
    except OSError:
        return True


def connect(
    name: str | None,
    *,
    region: str | None = None,
    local: bool = False,
    state_file: str | Path = LOCAL_STATE_FILE,
) -> Target:
    """Find the pipeline: a local run's state file, or a deployed stack by stack or environment name."""
    if local:
        path = Path(state_file)
        if not path.is_file():
            option, note = stack_option_hint()
            raise OperatorError(
                f"no local run found ({path} is missing): start one with `pipeline local {option} --serve`{note}"
            )
        state = json.loads(path.read_text())
        if _run_is_gone(state):
            option, note = stack_option_hint()
            raise OperatorError(
                f"the local run that wrote {path} is no longer running (process {state['pid']} is gone: killed, "
                f"or its machine restarted): start one with `pipeline local {option} --serve`{note}"
            )
        session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name=state["region"]
        )
        return Target(
            state["stack"],
            state["region"],
            _manifest(state["stack"], state["outputs"]),
            session,
            state["endpoint"],
            state.get("batchEndpoint"),
        )
    if not name:
        option, note = stack_option_hint()
        raise OperatorError(f"name the deployed stack with `{option}`{note}, or use --local")
    session = boto3.session.Session(region_name=region)
    if session.region_name is None:
        raise explain(NoRegionError())
    endpoint = os.environ.get("AWS_ENDPOINT_URL_CLOUDFORMATION") or os.environ.get("AWS_ENDPOINT_URL")
    cloudformation = session.client("cloudformation")
    candidates = [name] if name.startswith("pipeline-") else [f"pipeline-{name}", name]
    for candidate in candidates:
        try:
            stacks = cloudformation.describe_stacks(StackName=candidate)["Stacks"]
        except ClientError as error:
            if "does not exist" in error.response.get("Error", {}).get("Message", ""):
                continue
            raise explain(error) from None
        except Exception as error:  # credentials, region, network: one line each
            raise explain(error, endpoint=endpoint) from None
        outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
        return Target(candidate, session.region_name, _manifest(candidate, outputs), session)
    raise OperatorError(
        f"stack {' or '.join(repr(c) for c in candidates)} not found in region {session.region_name}: "
        "check the name, or the region (--region, AWS_REGION)"
    )


def _manifest(stack: str, outputs: dict[str, str]) -> dict[str, Any]:
    for name in (MANIFEST_OUTPUT, EARLIER_MANIFEST_OUTPUT):
        if name in outputs:
            return json.loads(outputs[name])
    raise OperatorError(f"stack {stack} has no {MANIFEST_OUTPUT} output: was it built with pipeline_constructs?")


# -------------------------------------------------------------------- submit


def task_files(paths: Iterable[str | Path]) -> dict[str, Path]:
    """Task id (the path under the folder, or the file name) -> local file."""
    tasks: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                tasks[file.relative_to(path).as_posix()] = file
        elif path.is_file():
            tasks[path.name] = path
        else:
            raise OperatorError(f"{path}: no such file or folder")
    return tasks


def known_tasks(target: Target, fleet_name: str, table_name: str) -> dict[str, str]:
    """Task id -> state, for every task the status store knows of this fleet (enqueued or finished)."""
    table = target.table(table_name)
    known: dict[str, str] = {}
    arguments: dict[str, Any] = {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :task)",
        "ExpressionAttributeValues": {":pk": f"fleet#{fleet_name}", ":task": "task#"},
        "ProjectionExpression": "sk, #state",
        "ExpressionAttributeNames": {"#state": "state"},
    }
    while True:
        page = table.query(**arguments)
        known.update({item["sk"].removeprefix("task#"): item.get("state", "") for item in page["Items"]})
        if "LastEvaluatedKey" not in page:
            return known
        arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]


@dataclass
class SubmitReport:
    found: int = 0
    already_known: int = 0
    uploaded: int = 0
    enqueued: int = 0
    failed: list[str] = field(default_factory=list)
    woke: bool = False  # the fleet was at zero and its group was raised to one worker
    wake_error: str = ""


def submit(
    target: Target,
    fleet_name: str | None,
    paths: Iterable[str | Path],
    *,
    dry_run: bool = False,
    concurrency: int = 16,
    on_progress: Callable[[int], None] | None = None,
) -> SubmitReport:
    """Upload files to ``<prefix>input/`` and enqueue one task each; tasks the status store knows are skipped.

    Resumable: each task is recorded ENQUEUED (never over a finished state) once SQS took it, so a second
    run sends nothing twice; a crash between sending and recording only re-sends, and workers skip done tasks.
    """
    name, fleet = target.fleet(fleet_name)
    files = task_files(paths)
    report = SubmitReport(found=len(files))
    known = known_tasks(target, name, fleet["table"])
    todo = {task_id: path for task_id, path in files.items() if task_id not in known}
    report.already_known = len(files) - len(todo)
    if dry_run or not todo:
        return report
    s3, sqs, table = target.client("s3"), target.client("sqs"), target.table(fleet["table"])

    def upload(item: tuple[str, Path]) -> None:
        task_id, path = item
        s3.upload_file(str(path), fleet["bucket"], f"{fleet['prefix']}input/{task_id}")

    def enqueue(batch: list[str]) -> list[str]:
        entries = [{"Id": str(i), "MessageBody": json.dumps({"key": task_id})} for i, task_id in enumerate(batch)]
        response = sqs.send_message_batch(QueueUrl=fleet["queueUrl"], Entries=entries)
        sent = [batch[int(ok["Id"])] for ok in response.get("Successful", [])]
        now = int(time.time())
        for task_id in sent:
            table.update_item(
                Key={"pk": f"fleet#{name}", "sk": f"task#{task_id}"},
                UpdateExpression="SET #state = if_not_exists(#state, :enqueued), enqueued_at = :now, "
                "expires_at = if_not_exists(expires_at, :expires)",
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={":enqueued": "ENQUEUED", ":now": now, ":expires": now + STATUS_TTL_SECONDS},
            )
        if on_progress:
            on_progress(len(batch))
        return [task_id for task_id in batch if task_id not in sent]

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(upload, todo.items()))
        report.uploaded = len(todo)
        ids = list(todo)
        batches = [ids[i : i + SQS_BATCH] for i in range(0, len(ids), SQS_BATCH)]
        for failed in pool.map(enqueue, batches):
            report.failed.extend(failed)
    report.enqueued = len(todo) - len(report.failed)
    if report.enqueued and fleet.get("group"):
        # Start a fleet at zero now, not when CloudWatch's per-minute SQS metrics catch up (minutes; more
        # after six idle hours). Never fails the submit: the tasks are in; scaling on the backlog follows.
        report.woke, report.wake_error = try_wake(target.client("autoscaling"), fleet["group"])
    return report


# -------------------------------------------------------------------- status, tail


def queue_depth(target: Target, url: str | None) -> tuple[int, int]:
    if not url:
        return 0, 0
    attributes = target.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _query_all(table: Any, partition: str, prefix: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    arguments: dict[str, Any] = {
        "KeyConditionExpression": "pk = :pk AND begins_with(sk, :prefix)" if prefix else "pk = :pk",
        "ExpressionAttributeValues": {":pk": partition, ":prefix": prefix} if prefix else {":pk": partition},
    }
    while True:
        page = table.query(**arguments)
        items += page["Items"]
        if "LastEvaluatedKey" not in page:
            return items
        arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def fleet_size(target: Target, fleet: dict[str, Any], workers: list[dict[str, Any]]) -> str:
    """``in service/desired`` from the Auto Scaling group, or live local workers (recent heartbeats)."""
    if target.endpoint is None:
        groups = target.client("autoscaling").describe_auto_scaling_groups(AutoScalingGroupNames=[fleet["group"]])
        for group in groups.get("AutoScalingGroups", []):
            in_service = sum(1 for i in group.get("Instances", []) if i.get("LifecycleState") == "InService")
            return f"{in_service}/{group['DesiredCapacity']}"
    fresh = [w for w in workers if w.get("state") == "RUNNING" and time.time() - float(w.get("updated_at", 0)) < 120]
    return f"{len(fresh)} worker(s)"


def status(target: Target) -> dict[str, Any]:
    fleets = {}
    for name, fleet in target.manifest.get("fleets", {}).items():
        rows = _query_all(target.table(fleet["table"]), f"fleet#{name}", "")
        tasks = Counter(row.get("state", "?") for row in rows if row["sk"].startswith("task#"))
        workers = [row for row in rows if row["sk"].startswith("worker#")]
        waiting, in_flight = queue_depth(target, fleet["queueUrl"])
        dead, _ = queue_depth(target, fleet.get("deadLetterQueueUrl"))
        fleets[name] = {
            "waiting": waiting,
            "in_flight": in_flight,
            "dead_letters": dead,
            "size": fleet_size(target, fleet, workers),
            "tasks": dict(tasks),
            "workers": {w["sk"].removeprefix("worker#"): w.get("state", "?") for w in workers},
        }
    chains = {}
    for name, chain in target.manifest.get("chains", {}).items():
        table = target.table(chain["table"])
        chains[name] = chain_runs(_query_all(table, f"chain#{name}", "run#"), chain.get("steps") or [])
        for run, state in chains[name].items():  # a fan-out step's state counts its children (_children)
            if any("children" in str(step_state) for step_state in state["steps"].values()):
                state |= run_children(_query_all(table, f"chain#{name}", f"child#{run}#"))
    return {"stack": target.stack, "fleets": fleets, "chains": chains}


def chain_runs(rows: list[dict[str, Any]], steps: list[str], latest: int = 5) -> dict[str, dict[str, Any]]:
    """The ``latest`` most recent runs of a chain (every run with ``latest=0``), from its job rows (``run#...``;
    a fan-out's ``child#...`` rows are no runs): ``{run: {"status", "reason", "steps": {step: state}}}``, the
    newest last, as a log reads; a fan-out step's state counts its failed children
    (``FAILED: 2 of 25 children failed``).

    A run is FAILED as soon as one of its jobs failed, with that job's reason (for a job its queue cancelled
    after it waited in RUNNABLE, why it waited: no spot capacity, or no instance type to hold it);
    SUCCEEDED once its last step did; else RUNNING.
    """
    runs: dict[str, dict[str, Any]] = {}
    last_active: dict[str, float] = {}
    jobs = sorted((row for row in rows if str(row.get("sk", "")).startswith("run#")), key=lambda r: r["sk"])
    for row in jobs:  # by sk: a run's steps in their order
        name = str(row.get("chain_run", "?"))
        run = runs.setdefault(name, {"status": "RUNNING", "reason": "", "steps": {}})
        last_active[name] = max(last_active.get(name, 0.0), job_activity(row))
        run["steps"][row.get("step", "?")] = f"{row.get('status', '?')}{_children(row)}"
        # A fan-out whose failed children the join was told about (``continue``) does not fail its run.
        if row.get("status") == "FAILED" and run["status"] != "FAILED" and not row.get("continued"):
            reason = "" if row.get("reason") in (None, "-") else str(row["reason"])  # the glue writes "-" for none
            run["status"], run["reason"] = "FAILED", row.get("stuck") or stuck_reason(reason) or reason
    for run in runs.values():
        if run["status"] == "RUNNING" and steps and str(run["steps"].get(steps[-1], "")).startswith("SUCCEEDED"):
            run["status"] = "SUCCEEDED"
    # By when each run last changed, not by name: run names (a job id, a user's name) need not sort by time.
    # The sort is stable: runs without any time keep their name order, before the others.
    by_recency = sorted(runs, key=last_active.__getitem__)
    return {name: runs[name] for name in (by_recency[-latest:] if latest else by_recency)}


def job_activity(row: dict[str, Any]) -> float:
    """When a chain job's row last changed, in epoch seconds: the latest of the glue's ``updated_at`` (seconds)
    and Batch's ``createdAt``/``startedAt``/``stoppedAt`` (milliseconds) it holds; 0 when it holds none."""
    scales = {"updated_at": 1, "createdAt": 1000, "startedAt": 1000, "stoppedAt": 1000}
    return max((float(row[name]) / scale for name, scale in scales.items() if row.get(name) is not None), default=0.0)


def run_children(rows: list[dict[str, Any]], shown: int = CHILDREN_SHOWN) -> dict[str, Any]:
    """A run's fan-out children from their rows (the glue writes them at the fan-in): ``{"children": {step:
    [{"index", "item", "status", "reason"}]}, "children_not_shown": {step: {status: count}}}``, failed first,
    at most ``shown`` a step."""
    by_step: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_step.setdefault(str(row.get("step", "?")), []).append(row)
    children: dict[str, list[dict[str, Any]]] = {}
    not_shown: dict[str, dict[str, int]] = {}
    for step, step_rows in by_step.items():
        ordered = sorted(step_rows, key=lambda r: (r.get("status") != "FAILED", int(r.get("child_index", 0))))
        children[step] = [
            {
                "index": int(row.get("child_index", 0)),
                "item": str(row.get("item", "")),
                "status": str(row.get("status", "?")),
                "reason": "" if row.get("reason") in (None, "-") else str(row["reason"]),
            }
            for row in ordered[:shown]
        ]
        not_shown[step] = dict(Counter(str(row.get("status", "?")) for row in ordered[shown:]))
    return {"children": children, "children_not_shown": not_shown}


def _children(row: dict[str, Any]) -> str:
    """How a fan-out step's children ended, after its state (``: 2 of 25 children failed, continued``, ``: all 25
    children succeeded``); else "". Failures are counted, not successes: ``FAILED 23/25`` read as 23 failed."""
    total = int(row.get("children_total") or 0)
    if not total:
        return ""
    failed = total - int(row.get("children_succeeded") or 0)
    outcome = f"{failed} of {total} children failed" if failed else f"all {total} children succeeded"
    return f": {outcome}{', continued' if row.get('continued') else ''}"


def tail(target: Target, fleet_name: str | None = None, limit: int = 20) -> list[dict[str, Any]]:
    """The latest failed attempts (RETRYING and FAILED tasks), newest first."""
    names = [target.fleet(fleet_name)[0]] if fleet_name else list(target.manifest.get("fleets", {}))
    failures = []
    for name in names:
        fleet = target.manifest["fleets"][name]
        for row in _query_all(target.table(fleet["table"]), f"fleet#{name}", "task#"):
            if row.get("state") in ("FAILED", "RETRYING"):
                failures.append(
                    {
                        "fleet": name,
                        "task": row["sk"].removeprefix("task#"),
                        "state": row["state"],
                        "attempts": int(row.get("attempts", 0)),
                        "error": row.get("error", ""),
                        "updated_at": float(row.get("updated_at", 0)),
                    }
                )
    return sorted(failures, key=lambda f: f["updated_at"], reverse=True)[:limit]


# -------------------------------------------------------------------- redrive, start


def dead_letter_count(target: Target, fleet_name: str | None) -> tuple[str, int]:
    name, fleet = target.fleet(fleet_name)
    if not fleet.get("deadLetterQueueUrl"):
        raise OperatorError(f"fleet {name} has no dead-letter queue")
    return name, queue_depth(target, fleet["deadLetterQueueUrl"])[0]


def redrive(target: Target, fleet_name: str | None) -> int:
    """Move every DLQ message back to the fleet's queue: send first, then delete, 10 at a time."""
    _, fleet = target.fleet(fleet_name)
    sqs, moved, empty_polls = target.client("sqs"), 0, 0
    while empty_polls < 2:
        messages = sqs.receive_message(
            QueueUrl=fleet["deadLetterQueueUrl"], MaxNumberOfMessages=SQS_BATCH, WaitTimeSeconds=1
        ).get("Messages", [])
        if not messages:
            empty_polls += 1
            continue
        empty_polls = 0
        entries = [{"Id": str(i), "MessageBody": m["Body"]} for i, m in enumerate(messages)]
        sent = sqs.send_message_batch(QueueUrl=fleet["queueUrl"], Entries=entries).get("Successful", [])
        done = [messages[int(ok["Id"])] for ok in sent]
        if done:
            sqs.delete_message_batch(
                QueueUrl=fleet["deadLetterQueueUrl"],
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(done)],
            )
        moved += len(done)
    return moved


def start(target: Target, chain_name: str, environment: dict[str, str], *, run: str | None = None) -> dict[str, str]:
    """Submit the chain's first step by hand, as a run of its own, once per run name.

    The run name (default: the chain and the current second) keys the same submit-once guard the glue
    function uses, so a start repeated with the same ``run`` (a retried script, two operators at once)
    submits one job and reports it.
    """
    chain = target.chain(chain_name)
    first = chain["steps"][0]
    run = run or f"{chain_name}-manual-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    overrides = environment | {"PIPELINE_CHAIN": chain_name, "PIPELINE_CHAIN_RUN": run, "PIPELINE_STEP": first}
    request = {
        "jobName": job_name(run, first),
        "jobQueue": chain["jobQueue"],
        "jobDefinition": chain["jobDefinitions"][first],
        "containerOverrides": {"environment": [{"name": k, "value": str(v)} for k, v in overrides.items()]},
    }
    guard = SubmitGuard(target.table(chain["table"]), target.client("batch"))
    submitted = guard.submit_once(f"trigger#{chain_name}", f"start#{run}", request)
    return {"run": run, **submitted}
