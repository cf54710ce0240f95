"""The fault matrix at size: a fleet of worker processes attacked while it works, and what survived.

300 tasks, 4 poison tasks and 1 hung task on 3 workers (real processes, the shipped runtime) against an
embedded moto server. Every 3 to 5 s a random worker is killed with SIGKILL (and restarted, as systemd
would); one worker gets a spot interruption notice and one a termination lifecycle action (both replaced,
as the Auto Scaling group would). Each worker talks to moto through its own proxy, which names the last call
a killed worker made: the random kills land before tasks, mid-task, right after deletes, during status
flushes. Measured at the end: tasks lost, outputs written twice, status rows and their reasons.

    python -m bench.chaos [--tasks 300] [--workers 3]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from pipeline_constructs.fleet.worker.config import SPARE_DELIVERIES
from pipeline_constructs.fleet.worker.status import TABLE_KEYS
from pipeline_constructs.local.autoscaling import LocalAutoScaling
from pipeline_constructs.local.imds import FakeInstanceMetadata
from pipeline_constructs.local.proxy import FaultProxy

ROOT = Path(__file__).resolve().parent.parent
TASK_TIMEOUT_SECONDS = 4
ATTEMPTS = 3


@dataclass
class Worker:
    number: int
    process: subprocess.Popen
    proxy: FaultProxy
    imds: FakeInstanceMetadata


@dataclass
class Chaos:
    """The fleet under attack: starts, restarts and strikes workers; counts what it did."""

    env: dict[str, str]
    endpoint: str
    autoscaling: LocalAutoScaling
    log_dir: Path
    workers: list[Worker] = field(default_factory=list)
    started: int = 0
    kills: Counter = field(default_factory=Counter)  # by the last call the victim made
    draining: set[int] = field(default_factory=set)  # workers given a notice: left to drain, not killed
    events: Counter = field(default_factory=Counter)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def spawn(self) -> Worker:
        self.started += 1
        proxy = FaultProxy(self.endpoint)
        imds = FakeInstanceMetadata(instance_id=f"i-chaos{self.started:03d}", group="chaos-workers")
        env = self.env | {
            "AWS_ENDPOINT_URL": proxy.endpoint,
            "PIPELINE_WORKER_ID": f"w{self.started}",
            "PIPELINE_METADATA_ENDPOINT": imds.endpoint,
        }
        log = (self.log_dir / f"worker-{self.started}.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "pipeline_constructs.fleet.worker"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        return Worker(self.started, process, proxy, imds)

    def supervise(self) -> None:
        """systemd restarts a crashed worker; the group replaces one that left (spot, lifecycle)."""
        while not self.stopping.is_set():
            with self.lock:
                for index, worker in enumerate(self.workers):
                    if worker.process.poll() is not None and not self.stopping.is_set():
                        worker.proxy.close()
                        worker.imds.close()
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
                worker.proxy.close()
                worker.imds.close()


def _resources(session: Any, name: str) -> dict[str, Any]:
    sqs, s3 = session.client("sqs"), session.client("s3")
    dlq = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": ATTEMPTS + SPARE_DELIVERIES}  # as the fleet's
    queue = sqs.create_queue(
        QueueName=name, Attributes={"VisibilityTimeout": "10", "RedrivePolicy": json.dumps(redrive)}
    )["QueueUrl"]
    s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    table = session.resource("dynamodb").create_table(
        TableName=f"{name}-status", BillingMode="PAY_PER_REQUEST", **TABLE_KEYS
    )
    return {"sqs": sqs, "s3": s3, "queue": queue, "dlq": dlq, "bucket": name, "table": table}


def _depth(sqs: Any, url: str) -> tuple[int, int]:
    attributes = sqs.get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])


def _output_versions(s3: Any, bucket: str) -> Counter:
    """Task id -> versions of its result.json (1: written exactly once)."""
    versions: Counter = Counter()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix="output/"):
        for version in page.get("Versions", []):
            if version["Key"].endswith("/result.json"):
                versions[version["Key"].split("/")[1]] += 1
    return versions


def _task_rows(table: Any, fleet: str) -> dict[str, dict[str, Any]]:
    rows, arguments = {}, {"KeyConditionExpression": "pk = :pk", "ExpressionAttributeValues": {":pk": f"fleet#{fleet}"}}
    while True:
        page = table.query(**arguments)
        rows |= {i["sk"].removeprefix("task#"): i for i in page["Items"] if i["sk"].startswith("task#")}
        if "LastEvaluatedKey" not in page:
            return rows
        arguments["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def measure(
    tasks: int = 300, workers: int = 3, seed: int = 7, timeout: float = 900, log_dir: Path = ROOT / ".bench" / "chaos"
) -> dict[str, Any]:
    from bench.emulator import moto_endpoint

    rng = random.Random(seed)
    with moto_endpoint() as endpoint:
        session = boto3.session.Session()
        name = f"chaos{uuid.uuid4().hex[:8]}"
        res = _resources(session, name)
        good = [f"task-{i:03d}" for i in range(tasks)]
        poison = [f"poison-{i}" for i in range(4)]
        bodies = [{"key": k, "work": rng.uniform(0, 0.3)} for k in good]
        bodies += [{"key": k, "poison": True} for k in poison] + [{"key": "hung", "hang": True}]
        rng.shuffle(bodies)
        for start in range(0, len(bodies), 10):
            entries = [{"Id": str(i), "MessageBody": json.dumps(b)} for i, b in enumerate(bodies[start : start + 10])]
            res["sqs"].send_message_batch(QueueUrl=res["queue"], Entries=entries)

        autoscaling = LocalAutoScaling()
        env = dict(os.environ) | {
            "PYTHONPATH": str(ROOT),
            "AWS_ENDPOINT_URL_AUTO_SCALING": autoscaling.endpoint,
            "PIPELINE_QUEUE_URL": res["queue"],
            "PIPELINE_BUCKET": res["bucket"],
            "PIPELINE_TABLE": res["table"].name,
            "PIPELINE_FLEET_NAME": name,
            "PIPELINE_TASK": "bench.chaos_tasks:work",
            "PIPELINE_CONCURRENCY": "4",
            "PIPELINE_WAIT_SECONDS": "2",
            "PIPELINE_RETRY_DELAY": "1",
            "PIPELINE_MAX_ATTEMPTS": str(ATTEMPTS),
            "PIPELINE_TASK_TIMEOUT": str(TASK_TIMEOUT_SECONDS),
            "PIPELINE_STOP_GRACE_SECONDS": "5",
            "PIPELINE_SPOT_WATCH": "on",
            "PIPELINE_SPOT_POLL_SECONDS": "1",
            "PIPELINE_SCALE_IN_PROTECTION": "off",
            "PIPELINE_LIFECYCLE_HOOK": "pipeline-drain",
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        chaos = Chaos(env=env, endpoint=endpoint, autoscaling=autoscaling, log_dir=log_dir)
        chaos.workers = [chaos.spawn() for _ in range(workers)]
        started = time.monotonic()
        for target, args in (
            (chaos.supervise, ()),
            (chaos.strike, (rng,)),
            (chaos.notify, (6.0, "spot")),
            (chaos.notify, (12.0, "lifecycle")),
        ):
            threading.Thread(target=target, args=args, daemon=True).start()

        def settled() -> bool:
            return _depth(res["sqs"], res["queue"]) == (0, 0) and _depth(res["sqs"], res["dlq"])[0] >= 5

        while time.monotonic() - started < timeout and not settled():
            time.sleep(2)
        elapsed = time.monotonic() - started
        chaos.stop()

        versions = _output_versions(res["s3"], res["bucket"])
        rows = _task_rows(res["table"], name)
        dead = []
        while True:
            batch = res["sqs"].receive_message(QueueUrl=res["dlq"], MaxNumberOfMessages=10, WaitTimeSeconds=0)
            if not batch.get("Messages"):
                break
            dead += [json.loads(m["Body"])["key"] for m in batch["Messages"]]
        autoscaling_calls = autoscaling.completed_lifecycle_actions()
        autoscaling.close()

    states = Counter(row.get("state") for row in rows.values())
    failed = {task: str(row.get("error", "")) for task, row in rows.items() if row.get("state") == "FAILED"}
    return {
        "tasks": tasks,
        "poison": len(poison),
        "hung": 1,
        "workers": workers,
        "seconds": round(elapsed, 1),
        "settled": elapsed < timeout,
        "kills": sum(chaos.kills.values()),
        "kills_by_last_call": dict(chaos.kills.most_common()),
        "spot_notices": chaos.events["spot"],
        "lifecycle_terminations": chaos.events["lifecycle"],
        "lifecycle_actions_completed": len(autoscaling_calls),
        "workers_started": chaos.started,
        "lost": len(set(good) - set(versions)),
        "duplicated_outputs": sum(1 for count in versions.values() if count > 1),
        "rows": dict(states),
        "succeeded_rows_of_good_tasks": sum(1 for t in good if rows.get(t, {}).get("state") == "SUCCEEDED"),
        "failed_rows_with_reason": sum(1 for reason in failed.values() if reason),
        "failed_reasons": failed,
        "dead_letters": sorted(dead),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(measure(args.tasks, args.workers), indent=2, default=str))


if __name__ == "__main__":
    main()
