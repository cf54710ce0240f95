"""The fault matrix at size: a fleet of worker processes attacked while it works, and what survived.

Real worker processes (the shipped runtime) against an embedded moto server, each worker behind proxies of
its own that fail, stall or refuse its calls (``bench/chaos_faults.py``), on fresh queues (with a dead-letter
and a downstream queue), bucket and table for every run:

- the matrix: 300 tasks, 4 poison tasks and 1 hung task on 3 workers. Every 3 to 5 s a random worker is
  killed with SIGKILL (and restarted, as systemd would); one worker gets a spot interruption notice and one a
  termination lifecycle action (both replaced, as the Auto Scaling group would). The proxies name the last
  call a killed worker made: the kills land before tasks, mid-task, right after deletes, during status
  flushes. Mixed in: every API fault of every call kind, duplicate task ids sent back to back, keys sent
  again once finished, a result too big to forward.
- a round per fault kind: a few tasks on 2 workers with that kind's faults alone and no kills, so that
  what goes wrong is that kind's doing: each call kind's 10 s stall, 5xx and throttling bursts; duplicate
  task ids in one receive; keys re-sent after they finished; results and output lists too big for a
  status row or a forward.

Measured per run: tasks lost (no output), outputs written twice, status rows missing or wrong (SUCCEEDED
naming the task's output; FAILED with the task's own reason, or in the matrix that its workers were lost),
messages stuck in flight (still hidden once the fleet sat idle for four visibility timeouts, and after every
worker stopped gracefully), forwards downstream (missing; disagreeing with the result stored; extra ones,
counted apart: at least once is the contract), tasks whose work ran to its output twice, and how often each
fault fired.

The workers run the task in one of the runtime's task kinds (``--task-kind``; the same behaviour in each,
``bench/chaos_tasks.py``): a Python function (the default), a command per task (``bench/chaos_command.py``)
or a worker-tier app each worker starts on a port of its own (``bench/chaos_app.py``). A mode that cannot
apply to a kind is left out of the bodies for that kind alone (:data:`SKIPPED_MODES`): a command returns no
result, so its tasks have no result over 256 KiB, and a forward cannot disagree with a stored result (the
forwards are checked to name the task's output instead, as in every kind).

    python -m bench.chaos [--tasks 300] [--workers 3] [--round-tasks 20] [--kinds matrix,s3:PUT,...]
                          [--task-kind function|command|http]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import boto3

from bench.chaos_faults import BURST_CALLS, CALL_KINDS, STALL_SECONDS, Fault, Refusals, fired, fired_by_call
from pipeline_constructs.fleet.worker.config import SPARE_DELIVERIES, TASK_KINDS
from pipeline_constructs.fleet.worker.status import TABLE_KEYS
from pipeline_constructs.local import free_port
from pipeline_constructs.local.autoscaling import LocalAutoScaling
from pipeline_constructs.local.imds import FakeInstanceMetadata
from pipeline_constructs.local.proxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent
TASK_TIMEOUT_SECONDS = 4
ATTEMPTS = 3
VISIBILITY_SECONDS = 10
#: A message still hidden after the fleet sat idle this long (four visibility timeouts) is stuck.
STUCK_SECONDS = 4 * VISIBILITY_SECONDS
ROUND_WORKERS = 2
ROUND_TASK_TIMEOUT_SECONDS = 12
#: Held past two thirds of the visibility timeout: the slow task's lease is extended while it runs.
SLOW_TASK_SECONDS = 7.5
#: The longest a round keeps tasks coming while its faults wait for the calls they strike.
FEED_SECONDS = 25
#: Rounds run side by side (each its own fleet and resources, on the one emulator).
ROUNDS_AT_ONCE = 5
#: A result over SQS's 256 KiB: too big to forward as it is.
BIG_RESULT_BYTES = 300_000
#: Outputs with long names whose list is over DynamoDB's 400 KB item (and SQS's 256 KiB message).
MANY_OUTPUTS = 450
#: Long enough for those outputs' puts on a busy emulator.
OVERSIZE_TASK_TIMEOUT_SECONDS = 60
SUCCEEDED = "SUCCEEDED"
MATRIX = "matrix"
#: How the report names each other kind's task.
KIND_DESCRIPTIONS = {
    "command": "a command, `python3 bench/chaos_command.py` per task (body, input and outputs as files)",
    "http": "a worker-tier app, `bench/chaos_app.py`, started by each worker on a port of its own "
    "(outputs and result in its JSON answer)",
}
#: Body modes a task kind cannot act on, and why: left out of that kind's bodies.
SKIPPED_MODES = {"command": {"result_bytes": "a command returns no result, only outputs"}}
#: The task each kind runs (``PIPELINE_TASK_KIND`` and the kind's own settings); an app's port is a worker's own.
KIND_SETTINGS = {
    "function": {"PIPELINE_TASK": "bench.chaos_tasks:work"},
    "command": {
        "PIPELINE_TASK_KIND": "command",
        "PIPELINE_COMMAND": json.dumps(["python3", str(ROOT / "bench" / "chaos_command.py")]),
    },
    "http": {
        "PIPELINE_TASK_KIND": "http",
        "PIPELINE_HTTP_START": json.dumps(["python3", str(ROOT / "bench" / "chaos_app.py")]),
    },
}


@dataclass
class Plan:
    """What a run sends, what it injects and what it expects of each task."""

    name: str
    title: str
    units: list[list[dict]]  # the bodies of a unit are sent back to back, in one batch
    expected: dict[str, str]  # task id -> SUCCEEDED, or what its FAILED row's reason must say
    faults: list[Fault] = field(default_factory=list)
    resend: list[dict] = field(default_factory=list)  # sent again once their row says SUCCEEDED
    workers: int = ROUND_WORKERS
    task_timeout: int = ROUND_TASK_TIMEOUT_SECONDS
    kills: bool = False
    feed: bool = False  # keep tasks coming until the faults are over (Feeder)
    timeout: float = 240
    task_kind: str = TASK_KINDS[0]
    skipped: dict[str, str] = field(default_factory=dict)  # modes left out of the bodies for the kind, and why

    @property
    def good(self) -> list[str]:
        return [task for task, expected in self.expected.items() if expected == SUCCEEDED]


@dataclass
class Worker:
    number: int
    process: subprocess.Popen
    proxy: FaultProxy  # its AWS calls
    scaling: FaultProxy  # its Auto Scaling calls
    imds: FakeInstanceMetadata

    def close(self) -> None:
        self.proxy.close()
        self.scaling.close()
        self.imds.close()


@dataclass
class Chaos:
    """The fleet under attack: starts, restarts and strikes workers; counts what it did."""

    env: dict[str, str]
    endpoint: str
    autoscaling: LocalAutoScaling
    log_dir: Path
    faults: list[Fault] = field(default_factory=list)
    refusals: Refusals = field(default_factory=Refusals)
    workers: list[Worker] = field(default_factory=list)
    started: int = 0
    kills: Counter = field(default_factory=Counter)  # by the last call the victim made
    draining: set[int] = field(default_factory=set)  # workers given a notice: left to drain, not killed
    events: Counter = field(default_factory=Counter)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self) -> Worker:
        self.started += 1
        proxy = FaultProxy(self.endpoint, authorize=self.refusals.authorize)
        scaling = FaultProxy(self.autoscaling.endpoint)
        for fault in self.faults:  # shared: a fault fires as often as it says, whichever worker calls
            (scaling if fault.autoscaling else proxy).add(fault)
        imds = FakeInstanceMetadata(instance_id=f"i-chaos{self.started:03d}", group="chaos-workers")
        env = self.env | {
            **({"PIPELINE_HTTP_PORT": str(free_port())} if self.env.get("PIPELINE_TASK_KIND") == "http" else {}),
            "AWS_ENDPOINT_URL": proxy.endpoint,
            "AWS_ENDPOINT_URL_AUTO_SCALING": scaling.endpoint,
            "PIPELINE_WORKER_ID": f"w{self.started}",
            "PIPELINE_METADATA_ENDPOINT": imds.endpoint,
        }
        log = (self.log_dir / f"worker-{self.started}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline_constructs.fleet.worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return Worker(self.started, process, proxy, scaling, imds)

    def supervise(self) -> None:
        """systemd restarts a crashed worker; the group replaces one that left (spot, lifecycle)."""
        while not self.stopping.is_set():
            with self.lock:
                for index, worker in enumerate(self.workers):
                    if worker.process.poll() is not None and not self.stopping.is_set():
                        worker.close()
                        self.workers[index] = self.spawn()
            time.sleep(0.5)

    def strike(self, rng: random.Random) -> None:
        while not self.stopping.wait(rng.uniform(3, 5)):
            with self.lock:
                live = [w for w in self.workers if w.process.poll() is None and w.number not in self.draining]
                if not live:
                    continue
                victim = rng.choice(live)
                last_call = victim.proxy.last_call or "nothing yet"
                victim.process.kill()
                self.kills[last_call] += 1

    def notify(self, after: float, how: str) -> None:
        if self.stopping.wait(after):
            return
        with self.lock:
            live = [w for w in self.workers if w.process.poll() is None and w.number not in self.draining]
            if live:
                victim = live[0]
                self.draining.add(victim.number)
                victim.imds.interrupt() if how == "spot" else victim.imds.terminate_lifecycle()
                self.events[how] += 1

    def stop(self) -> None:
        """SIGTERM to every worker (a graceful stop: they drain), then wait for each."""
        self.stopping.set()
        with self.lock:
            for worker in self.workers:
                if worker.process.poll() is None:
                    worker.process.send_signal(signal.SIGTERM)
            for worker in self.workers:
                try:
                    worker.process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    worker.process.kill()
                    worker.process.wait()
                worker.close()

    @property
    def restarts(self) -> int:
        """Workers started again after they died on their own (not killed, not replaced after a notice)."""
        return max(0, self.started - len(self.workers) - sum(self.kills.values()) - sum(self.events.values()))


# ---------------------------------------------------------------- plans


def _task(rng: random.Random, key: str, **mode: Any) -> dict:
    return {"key": key, "work": rng.uniform(0, 0.3), "input": True} | mode


def _tasks(
    rng: random.Random, count: int, *, slow: int = 0, flaky: int = 0, poison: int = 0
) -> tuple[list[list[dict]], dict[str, str]]:
    """Units of one task each: good ones, slow ones, ones failing their first attempt, poison ones."""
    bodies = [_task(rng, f"task-{i:03d}") for i in range(count)]
    bodies += [_task(rng, f"slow-{i}", work=SLOW_TASK_SECONDS) for i in range(slow)]
    bodies += [_task(rng, f"flaky-{i}", fail_first=True) for i in range(flaky)]
    bodies += [{"key": f"poison-{i}", "poison": True} for i in range(poison)]
    expected = {b["key"]: f"poison task {b['key']}" if b.get("poison") else SUCCEEDED for b in bodies}
    return [[body] for body in bodies], expected


def matrix_plan(rng: random.Random, tasks: int, workers: int) -> Plan:
    units, expected = _tasks(rng, tasks, poison=4)
    units.append([{"key": "hung", "hang": True}])
    expected["hung"] = "timed out"
    pairs = [[_task(rng, f"twice-{i}")] * 2 for i in range(2)]
    big = [_task(rng, "big-result", result_bytes=BIG_RESULT_BYTES)]
    units += [*pairs, big]
    expected |= {unit[0]["key"]: SUCCEEDED for unit in [*pairs, big]}
    rng.shuffle(units)
    faults = [fault for kind in CALL_KINDS for fault in kind.faults(skip=kind.mixed_skip)]
    return Plan(
        name=MATRIX,
        title="kill -9 matrix, every API fault mixed in",
        units=units,
        expected=expected,
        faults=faults,
        resend=[unit[0] for unit in units if unit[0]["key"].startswith("task-")][:3],
        workers=workers,
        task_timeout=TASK_TIMEOUT_SECONDS,
        kills=True,
        timeout=600,
    )


def round_plans(rng: random.Random, count: int) -> list[Plan]:
    """A round per call kind (its faults alone), then one per shape of input the runtime must take."""
    plans = []
    for kind in CALL_KINDS:
        units, expected = _tasks(rng, count, slow=1, flaky=3, poison=2)
        rng.shuffle(units)
        title = f"{kind.name}: a {STALL_SECONDS:g} s stall, 5xx, throttles"
        plans.append(Plan(kind.name, title, units, expected, faults=kind.faults(skip=kind.skip), feed=True))
    units, expected = _tasks(rng, count)
    pairs = [[_task(rng, f"twice-{i}")] * 2 for i in range(5)]  # the first receive takes them together
    expected |= {pair[0]["key"]: SUCCEEDED for pair in pairs}
    plans.append(Plan("duplicate-ids", "duplicate task ids in one receive (5 pairs)", pairs + units, expected))
    units, expected = _tasks(rng, count)
    resend = [unit[0] for unit in units[:5]]
    plans.append(Plan("re-sent-keys", "5 keys sent again after they finished", units, expected, resend=resend))
    units, expected = _tasks(rng, count)
    big = [[_task(rng, f"big-result-{i}", result_bytes=BIG_RESULT_BYTES)] for i in range(2)]
    many = [[_task(rng, "many-outputs", outputs=MANY_OUTPUTS)]]
    expected |= {unit[0]["key"]: SUCCEEDED for unit in big + many}
    title = f"2 results over 256 KiB, {MANY_OUTPUTS} outputs listed (over 400 KB)"
    plans.append(Plan("oversize", title, units + big + many, expected, task_timeout=OVERSIZE_TASK_TIMEOUT_SECONDS))
    return plans


def for_kind(plan: Plan, task_kind: str) -> Plan:
    """The plan for workers of ``task_kind``: the modes that kind cannot act on left out of every body
    (:data:`SKIPPED_MODES`), and named in its title."""
    skipped_modes = SKIPPED_MODES.get(task_kind, {})

    def adapted(body: dict) -> dict:
        skipped.update({mode: skipped_modes[mode] for mode in body if mode in skipped_modes})
        return {mode: value for mode, value in body.items() if mode not in skipped_modes}

    skipped: dict[str, str] = {}
    units = [[adapted(body) for body in unit] for unit in plan.units]
    resend = [adapted(body) for body in plan.resend]
    title = plan.title + "".join(f" ({mode} skipped: {why})" for mode, why in skipped.items())
    return replace(plan, title=title, units=units, resend=resend, task_kind=task_kind, skipped=skipped)


# ---------------------------------------------------------------- one run


def _resources(session: Any, name: str) -> dict[str, Any]:
    sqs, s3 = session.client("sqs"), session.client("s3")
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": ATTEMPTS + SPARE_DELIVERIES}  # as the fleet's
    queue = sqs.create_queue(
        QueueName=name,
        Attributes={"VisibilityTimeout": str(VISIBILITY_SECONDS), "RedrivePolicy": json.dumps(redrive)},
    )["QueueUrl"]
    downstream = sqs.create_queue(QueueName=f"{name}-downstream")["QueueUrl"]
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    table = session.resource("dynamodb").create_table(
        TableName=f"{name}-status", BillingMode="PAY_PER_REQUEST", **TABLE_KEYS
    )
    return {"sqs": sqs, "s3": s3, "queue": queue, "dlq": dlq, "downstream": downstream, "bucket": name, "table": table}


def _send(sqs: Any, url: str, units: list[list[dict]]) -> None:
    """In batches of ten, a unit never split between two."""
    batch: list[dict] = []
    for unit in [*units, []]:
        if batch and (not unit or len(batch) + len(unit) > 10):
            entries = [{"Id": str(i), "MessageBody": json.dumps(body)} for i, body in enumerate(batch)]
            sqs.send_message_batch(QueueUrl=url, Entries=entries)
            batch = []
        batch += unit


def _depth(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


class Producer:
    """Sends tasks while the fleet works, on a thread of its own; :meth:`finished` once it sends no more."""

    def __init__(self, res: dict[str, Any]) -> None:
        self.res = res
        self.sent: list[str] = []
        self.last_sent = 0.0
        self.stopping = threading.Event()
        self._finished = threading.Event()
        threading.Thread(target=self._produce, name=type(self).__name__, daemon=True).start()

    def _produce(self) -> None:
        try:
            self.run()
        finally:
            self._finished.set()

    def run(self) -> None:
        raise NotImplementedError

    def finished(self) -> bool:
        return self._finished.is_set()

    def send(self, bodies: list[dict]) -> None:
        for body in bodies:
            if body.get("input"):
                self.res["s3"].put_object(Bucket=self.res["bucket"], Key=f"input/{body['key']}", Body=b"input")
        _send(self.res["sqs"], self.res["queue"], [bodies])
        self.sent += [body["key"] for body in bodies]
        self.last_sent = time.monotonic()


class Resender(Producer):
    """Sends keys again, each once its row says SUCCEEDED (a producer re-submitting finished work)."""

    def __init__(self, res: dict[str, Any], bodies: list[dict]) -> None:
        self.pending = {body["key"]: body for body in bodies}
        super().__init__(res)

    def run(self) -> None:
        while self.pending and not self.stopping.wait(0.5):
            for key, body in list(self.pending.items()):
                row = self.res["table"].get_item(Key={"pk": f"fleet#{self.res['bucket']}", "sk": f"task#{key}"})
                if row.get("Item", {}).get("state") == SUCCEEDED:
                    self.send([body])
                    del self.pending[key]


class Feeder(Producer):
    """Keeps work coming until the plan's faults are over (a fault waits for the calls it strikes), for
    :data:`FEED_SECONDS` at most: every second two tasks and one failing its first attempt, every other
    second a poison task too (their redeliveries and spare deliveries make the rarer calls)."""

    def __init__(self, res: dict[str, Any], plan: Plan, rng: random.Random) -> None:
        self.plan = plan
        self.rng = random.Random(rng.random())
        super().__init__(res)

    def run(self) -> None:
        deadline = time.monotonic() + FEED_SECONDS
        cycle = 0
        while not all(fault.over() for fault in self.plan.faults) and time.monotonic() < deadline:
            if self.stopping.wait(1):
                return
            bodies = [_task(self.rng, f"fed-{cycle:02d}-{i}") for i in range(2)]
            bodies.append(_task(self.rng, f"fed-{cycle:02d}-flaky", fail_first=True))
            if cycle % 2:
                bodies.append({"key": f"fed-{cycle:02d}-poison", "poison": True})
            self.plan.expected |= {
                b["key"]: f"poison task {b['key']}" if b.get("poison") else SUCCEEDED for b in bodies
            }
            self.send(bodies)
            cycle += 1


@dataclass
class Watched:
    seconds: float
    settled: bool  # nothing left in the queue
    idle_in_flight: int | None  # hidden messages when the fleet sat idle; None: it never did (timed out)


def _watch(res: dict[str, Any], plan: Plan, producers: list[Producer], started: float) -> Watched:
    """Until the queue is empty (and the producers done, or the queue empty for 5 s: a key to re-send that
    is not done by then never will be), or the fleet sits idle with messages still hidden for
    :data:`STUCK_SECONDS` after its last change and its faults' end."""
    last_state: tuple[int, ...] = ()
    last_change = empty_since = time.monotonic()
    while (now := time.monotonic()) - started < plan.timeout:
        waiting, in_flight = _depth(res["sqs"], res["queue"])
        state = (waiting, in_flight, _depth(res["sqs"], res["dlq"])[0], sum(len(p.sent) for p in producers))
        if state != last_state:
            last_state, last_change = state, now
        if (waiting, in_flight) != (0, 0):
            empty_since = now
        elif all(p.finished() for p in producers) or now - empty_since >= 5:
            return Watched(now - started, True, 0)
        quiet_since = max(
            [last_change] + [p.last_sent for p in producers] + [fault.cleared_at for fault in plan.faults]
        )
        if waiting == 0 and in_flight and now - quiet_since >= STUCK_SECONDS:
            return Watched(now - started, False, in_flight)
        time.sleep(1)
    return Watched(plan.timeout, False, None)


def _worker_env(res: dict[str, Any], plan: Plan, autoscaling: LocalAutoScaling, runs: Path) -> dict[str, str]:
    return dict(os.environ, **KIND_SETTINGS[plan.task_kind]) | {
        "PYTHONPATH": str(ROOT),
        "AWS_ENDPOINT_URL_AUTO_SCALING": autoscaling.endpoint,
        "PIPELINE_QUEUE_URL": res["queue"],
        "PIPELINE_DOWNSTREAM_QUEUE_URL": res["downstream"],
        "PIPELINE_BUCKET": res["bucket"],
        "PIPELINE_TABLE": res["table"].name,
        "PIPELINE_FLEET_NAME": res["bucket"],
        "PIPELINE_CONCURRENCY": "4",
        "PIPELINE_WAIT_SECONDS": "2",
        "PIPELINE_RETRY_DELAY": "1",
        "PIPELINE_MAX_ATTEMPTS": str(ATTEMPTS),
        "PIPELINE_TASK_TIMEOUT": str(plan.task_timeout),
        "PIPELINE_STOP_GRACE_SECONDS": "5",
        "PIPELINE_SPOT_WATCH": "on",
        "PIPELINE_SPOT_POLL_SECONDS": "1",
        "PIPELINE_SCALE_IN_PROTECTION": "on",
        "PIPELINE_LIFECYCLE_HOOK": "pipeline-drain",
        "CHAOS_RUNS": str(runs),
    }


def run(plan: Plan, endpoint: str, log_dir: Path, rng: random.Random) -> dict[str, Any]:
    """One fleet through one plan; what survived (:func:`_outcome`) and what was done to it."""
    res = _resources(boto3.session.Session(), f"chaos{uuid.uuid4().hex[:8]}")
    for body in {b["key"]: b for unit in plan.units for b in unit if b.get("input")}.values():
        res["s3"].put_object(Bucket=res["bucket"], Key=f"input/{body['key']}", Body=b"input")
    _send(res["sqs"], res["queue"], plan.units)
    log_dir.mkdir(parents=True, exist_ok=True)
    runs = log_dir / f"runs-{res['bucket']}.txt"  # the run's own: another `make chaos` may share the folder
    autoscaling = LocalAutoScaling()
    chaos = Chaos(_worker_env(res, plan, autoscaling, runs), endpoint, autoscaling, log_dir, faults=plan.faults)
    chaos.workers = [chaos.spawn() for _ in range(plan.workers)]
    started = time.monotonic()
    threads: list[tuple[Any, tuple]] = [(chaos.supervise, ())]
    if plan.kills:
        threads += [(chaos.strike, (rng,)), (chaos.notify, (6.0, "spot")), (chaos.notify, (12.0, "lifecycle"))]
    for target, args in threads:
        threading.Thread(target=target, args=args, daemon=True).start()
    resender = Resender(res, plan.resend)
    producers: list[Producer] = [resender] + ([Feeder(res, plan, rng)] if plan.feed else [])
    watched = _watch(res, plan, producers, started)
    for producer in producers:
        producer.stopping.set()
    chaos.stop()
    in_flight_after_stop = _depth(res["sqs"], res["queue"])[1]
    if watched.settled:
        stuck = 0
    elif watched.idle_in_flight is not None:  # hidden while idle, and still after the graceful stop
        stuck = min(watched.idle_in_flight, in_flight_after_stop)
    else:
        stuck = in_flight_after_stop
    completed = len(autoscaling.completed_lifecycle_actions())
    autoscaling.close()
    result = {
        "kind": plan.name,
        "title": plan.title,
        "task_kind": plan.task_kind,
        "skipped_modes": plan.skipped,
        "tasks": len(plan.good),
        "failing": len(plan.expected) - len(plan.good),
        "workers": plan.workers,
        "seconds": round(watched.seconds, 1),
        "settled": watched.settled,
        "faults_fired": fired(plan.faults),
        "faults_fired_by_call": fired_by_call(plan.faults),
        "refused": dict(chaos.refusals.counts),
        "stuck": stuck,
        "kills": sum(chaos.kills.values()),
        "kills_by_last_call": dict(chaos.kills.most_common()),
        "spot_notices": chaos.events["spot"],
        "lifecycle_terminations": chaos.events["lifecycle"],
        "lifecycle_actions_completed": completed,
        "workers_started": chaos.started,
        "worker_restarts": chaos.restarts,
        "resent": resender.sent,
        "resends_never_sent": sorted(resender.pending),
        "fed": len(producers[1].sent) if plan.feed else 0,
        **_outcome(res, plan, runs),
    }
    runs.unlink(missing_ok=True)
    return result


# ---------------------------------------------------------------- what survived


def _output_versions(s3: Any, bucket: str) -> Counter:
    """Task id -> versions of its result.json (1: written exactly once)."""
    versions: Counter = Counter()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="output/"):
        for version in page.get("Versions", []):
            if version["Key"].endswith("/result.json"):
                versions[version["Key"].split("/")[1]] += 1
    return versions


def _task_rows(table: Any, fleet: str) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    arguments: dict[str, Any] = {
        "KeyConditionExpression": "pk = :pk",
        "ExpressionAttributeValues": {":pk": f"fleet#{fleet}"},
    }
    while True:
        page = table.query(**arguments)
        rows |= {i["sk"].removeprefix("task#"): i for i in page["Items"] if i["sk"].startswith("task#")}
        if "LastEvaluatedKey" not in page:
            return rows
        arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def _drain(sqs: Any, url: str) -> list[Any]:
    """Every message of a queue (hidden for long enough not to come round again), bodies parsed."""
    bodies: list[Any] = []
    while True:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=600)
        if not batch.get("Messages"):
            return bodies
        bodies += [json.loads(m["Body"]) for m in batch["Messages"]]


#: A FAILED row's reason when the workers of its attempts were killed: as true as the task's own, under kills.
KILLED_REASONS = ("worker lost", "lost before their task started")


def _row_problem(row: dict[str, Any] | None, task: str, expected: str, s3: Any, *, kills: bool) -> str:
    """What is wrong with a task's final row ("" if nothing): SUCCEEDED naming its output (in the row, or in
    an object the row names by its ``s3://`` URI: a list too big for a row), or FAILED with its own reason
    (or, where workers were killed, that they were)."""
    if row is None:
        return "no row"
    state, error = row.get("state"), str(row.get("error", ""))
    if expected != SUCCEEDED:
        reasons = (expected, *KILLED_REASONS) if kills else (expected,)
        true = state == "FAILED" and any(reason in error for reason in reasons)
        return "" if true else f"{state} {error[:120]!r}, expected {expected!r}"
    if state != SUCCEEDED:
        return f"{state} {error[:120]!r}"
    output = f"output/{task}/result.json"
    listed = [row.get("outputs") or []]
    for uri in [value for value in row.values() if isinstance(value, str) and value.startswith("s3://")]:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        try:
            listed.append(json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read()).get("outputs") or [])
        except (s3.exceptions.ClientError, ValueError, AttributeError):  # not there, or not such a list
            continue
    return "" if any(output in outputs for outputs in listed) else "SUCCEEDED without its outputs"


def _stored_run(s3: Any, bucket: str, task: str) -> str | None:
    """The run named by the result the task's completion marker stored."""
    try:
        marker = json.loads(s3.get_object(Bucket=bucket, Key=f"output/{task}/_SUCCESS")["Body"].read())
    except s3.exceptions.NoSuchKey:
        return None
    result = marker.get("result")
    return result.get("run") if isinstance(result, dict) else None


def _disagreeing(s3: Any, bucket: str, task: str, bodies: list[dict]) -> int:
    """A task's forwards that disagree with what was stored: a result of another run than the stored one's,
    or outputs carried inline without the task's own (a command's forwards carry no result: only this)."""

    def run_of(body: dict) -> str | None:
        return body["result"].get("run") if isinstance(body.get("result"), dict) else None

    stored = _stored_run(s3, bucket, task) if any(run_of(body) for body in bodies) else None
    output = f"output/{task}/result.json"
    other_run = [bool(run_of(body)) and run_of(body) != stored for body in bodies]
    without_output = [not body.get("outcome") and output not in body.get("outputs", []) for body in bodies]
    return sum(1 for wrong in zip(other_run, without_output, strict=True) if any(wrong))


def _outcome(res: dict[str, Any], plan: Plan, runs: Path) -> dict[str, Any]:
    versions = _output_versions(res["s3"], res["bucket"])
    rows = _task_rows(res["table"], res["bucket"])
    wrong = {
        task: why
        for task, expected in plan.expected.items()
        if (why := _row_problem(rows.get(task), task, expected, res["s3"], kills=plan.kills))
    }
    forwards: dict[str, list[dict]] = {}
    for body in _drain(res["sqs"], res["downstream"]):
        forwards.setdefault(str(body.get("key")), []).append(body)
    disagreeing = sum(_disagreeing(res["s3"], res["bucket"], task, bodies) for task, bodies in forwards.items())
    completed_runs = Counter(line.split()[0] for line in runs.read_text().splitlines()) if runs.exists() else Counter()
    failed = {task: str(row.get("error", "")) for task, row in rows.items() if row.get("state") == "FAILED"}
    return {
        "lost": sum(1 for task in plan.good if not versions[task]),
        "outputs_written_twice": sum(1 for count in versions.values() if count > 1),
        "rows_missing_or_wrong": len(wrong),
        "wrong_rows": dict(sorted(wrong.items())),
        "forwards_missing": sum(1 for task in plan.good if not forwards.get(task)),
        "forwards_disagreeing": disagreeing,
        "forwards_extra": sum(len(bodies) - 1 for bodies in forwards.values() if len(bodies) > 1),
        "ran_twice": sum(1 for task in plan.good if completed_runs[task] > 1),
        "rows": dict(Counter(row.get("state") for row in rows.values())),
        "failed_reasons": failed,
        "dead_letters": sorted(str(body.get("key")) for body in _drain(res["sqs"], res["dlq"])),
    }


# ---------------------------------------------------------------- the whole matrix, and its report


def measure(
    tasks: int = 300,
    workers: int = 3,
    seed: int = 7,
    round_tasks: int = 20,
    kinds: set[str] | None = None,
    log_dir: Path = ROOT / ".bench" / "chaos",
    task_kind: str = TASK_KINDS[0],
) -> dict[str, Any]:
    """The matrix, then the rounds (:data:`ROUNDS_AT_ONCE` at a time), only ``kinds`` if given (by name), on
    workers of ``task_kind``; every run's figures, in that order."""
    from bench.emulator import moto_endpoint

    rng = random.Random(seed)
    plans = [matrix_plan(rng, tasks, workers), *round_plans(rng, round_tasks)]
    plans = [for_kind(plan, task_kind) for plan in plans if kinds is None or plan.name in kinds]
    if task_kind != TASK_KINDS[0]:
        log_dir /= task_kind

    def one(plan: Plan) -> dict[str, Any]:
        folder = log_dir / plan.name.replace(":", "-").replace("*", "all")
        result = run(plan, endpoint, folder, random.Random(f"{seed}-{plan.name}"))
        print(f"chaos: {plan.name} done in {result['seconds']} s", file=sys.stderr, flush=True)
        return result

    with moto_endpoint() as endpoint:
        results = [one(plan) for plan in plans if plan.name == MATRIX]  # alone: its timeouts are short
        with ThreadPoolExecutor(max_workers=ROUNDS_AT_ONCE) as pool:
            results += pool.map(one, [plan for plan in plans if plan.name != MATRIX])
    return {"round_tasks": round_tasks, "task_kind": task_kind, "runs": results}


#: The figures ``make bench`` judges (target 0 each), and the measurement of every run they sum.
FIGURES = {
    "chaos_tasks_lost": "lost",
    "chaos_outputs_written_twice": "outputs_written_twice",
    "chaos_status_rows_missing_or_wrong": "rows_missing_or_wrong",
    "chaos_messages_stuck": "stuck",
    "chaos_forwards_missing": "forwards_missing",
    "chaos_forwards_disagreeing": "forwards_disagreeing",
}
COLUMNS = {  # per-kind table: heading -> measurement
    "lost": "lost",
    "outputs twice": "outputs_written_twice",
    "rows missing or wrong": "rows_missing_or_wrong",
    "stuck": "stuck",
    "forwards missing": "forwards_missing",
    "forward ≠ stored": "forwards_disagreeing",
    "extra forwards": "forwards_extra",
    "ran twice": "ran_twice",
    "worker restarts": "worker_restarts",
    "s": "seconds",
}


def figures(result: dict[str, Any]) -> dict[str, int]:
    """Each judged figure summed over every run of the matrix."""
    return {figure: sum(run[key] for run in result["runs"]) for figure, key in FIGURES.items()}


def _fired_cell(run: dict[str, Any]) -> str:
    cells = [f"{label} {count}" for label, count in run["faults_fired"].items()]
    cells += [f"refused: {what} {count}" for what, count in run["refused"].items()]
    return ", ".join(cells) or "none"


def _matrix_lines(matrix: dict[str, Any]) -> list[str]:
    skipped = matrix.get("skipped_modes", {})
    big = "" if "result_bytes" in skipped else ", one with a result over 256 KiB"
    return [
        f"- The matrix: {matrix['tasks']} good tasks (2 of them sent twice back to back{big}) and "
        f"{matrix['failing']} failing ones (4 poison, 1 hung) on "
        f"{matrix['workers']} worker processes (concurrency 4, task timeout {TASK_TIMEOUT_SECONDS} s, {ATTEMPTS} "
        f"attempts, visibility {VISIBILITY_SECONDS} s, a downstream queue); "
        + (f"settled in {matrix['seconds']} s." if matrix["settled"] else f"not settled after {matrix['seconds']} s."),
        f"- Process faults: {matrix['kills']} kill -9 (one every 3-5 s; each worker restarted), "
        f"{matrix['spot_notices']} spot notice, {matrix['lifecycle_terminations']} termination lifecycle action "
        f"({matrix['lifecycle_actions_completed']} completed by its worker); {matrix['workers_started']} worker "
        f"processes started in all, {matrix['worker_restarts']} of them after a worker died of its own accord.",
        f"- Where the kills struck (the victim's last call): `{json.dumps(matrix['kills_by_last_call'])}`; the "
        "tests also kill at each point on purpose (`tests/fleet/test_worker_faults.py`).",
        f"- API faults mixed in, on each call kind of the table below: {_fired_cell(matrix)}; "
        f"{len(matrix['resent'])} keys sent again once finished.",
        f"- Lost: {matrix['lost']}. Outputs written twice: {matrix['outputs_written_twice']}. Status rows: "
        f"`{json.dumps(matrix['rows'])}`, {matrix['rows_missing_or_wrong']} missing or wrong. Stuck in flight: "
        f"{matrix['stuck']}. Forwards missing: {matrix['forwards_missing']}, disagreeing with the stored result: "
        f"{matrix['forwards_disagreeing']}, extra: {matrix['forwards_extra']}. Work run twice: {matrix['ran_twice']}.",
        *[f"  - {task}: {reason}" for task, reason in sorted(matrix["failed_reasons"].items())],
        f"- Dead letters: {', '.join(matrix['dead_letters'])}.",
    ]


def report_section(result: dict[str, Any]) -> list[str]:
    """The chaos section of bench/REPORT.md."""
    runs = result["runs"]
    matrix = next((run for run in runs if run["kind"] == MATRIX), None)
    task_kind = result.get("task_kind", TASK_KINDS[0])
    lines = ["## Fault matrix at size (`bench/chaos.py`)"]
    if task_kind != TASK_KINDS[0]:
        skipped = "".join(f"; {mode} skipped: {why}" for mode, why in SKIPPED_MODES.get(task_kind, {}).items())
        lines = [
            f"## Fault matrix at size, {task_kind} workers (`bench/chaos.py --task-kind {task_kind}`)",
            f"- The same task as {KIND_DESCRIPTIONS[task_kind]}{skipped}.",
        ]
    lines += _matrix_lines(matrix) if matrix else []
    lines += [
        "",
        "### Per fault kind",
        f"- A round per kind on fresh resources: {result['round_tasks']} tasks reading their input, a slow one "
        f"({SLOW_TASK_SECONDS:g} s: its lease is extended), 3 failing their first attempt and 2 poison tasks on "
        f"{ROUND_WORKERS} workers (task timeout {ROUND_TASK_TIMEOUT_SECONDS} s), no kills, that kind's faults "
        f"only, shared by the workers' proxies: a {STALL_SECONDS:g} s stall, then a burst of 5xx and one of "
        f"throttles, each striking {BURST_CALLS} whole calls (every attempt of each: past the SDK's retries). A "
        f"message is stuck if it is still hidden after the fleet sat idle for {STUCK_SECONDS} s (four visibility "
        "timeouts) and after every worker stopped gracefully. A row is right if SUCCEEDED naming the task's "
        "output (in the row or in the object it names), or FAILED with the task's own reason (in the matrix also: "
        "its workers were lost), not an injected error. Targets 0: lost, outputs twice, rows missing or "
        "wrong, stuck, forwards missing, forward ≠ stored; extra forwards (at least once is the contract) and "
        "work run twice are measured, not judged. No Batch job is submitted here: jobs submitted twice are "
        "the submit-once section's figure.",
        "",
        f"| kind | faults fired | {' | '.join(COLUMNS)} |",
        "| --- | --- |" + " --- |" * len(COLUMNS),
    ]
    for run in runs:
        settled = "" if run["settled"] else " (not settled)"
        values = " | ".join(str(run[key]) for key in COLUMNS.values())
        lines.append(f"| {run['title']}{settled} | {_fired_cell(run)} | {values} |")
    wrong = [(run["kind"], task, why) for run in runs for task, why in list(run["wrong_rows"].items())[:5]]
    if wrong:
        lines += ["", "- Rows missing or wrong (at most 5 a kind):"]
        lines += [f"  - {kind}: {task}: {why}" for kind, task, why in wrong]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="tasks of the matrix")
    parser.add_argument("--workers", type=int, default=3, help="workers of the matrix")
    parser.add_argument("--round-tasks", type=int, default=20, help="good tasks of each round")
    parser.add_argument("--kinds", help="only these runs, by name, comma-separated (matrix, s3:PUT, oversize...)")
    parser.add_argument("--task-kind", choices=TASK_KINDS, default=TASK_KINDS[0], help="what the workers run per task")
    args = parser.parse_args()
    kinds = set(args.kinds.split(",")) if args.kinds else None
    result = measure(args.tasks, args.workers, round_tasks=args.round_tasks, kinds=kinds, task_kind=args.task_kind)
    print(json.dumps(result, indent=2, default=str))
    print("\n".join(report_section(result)))
    print(json.dumps(figures(result)))


if __name__ == "__main__":
    main()
