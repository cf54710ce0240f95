"""A fan-out chain's world in the emulator (``split`` -> ``work``, the fan-out -> ``join``), the children of its
array job, and the checks of what the glue left: what ``tests/glue/test_fan_out*.py`` and
``bench.fan_out_faults`` run the glue against.

moto runs no array children without Docker (each child it lists has FAILED, with no index and no reason), so
the children's outcome is the world's to say (:class:`ArrayChildren`).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import boto3

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.ops import operator
from tests.support.resources import create_batch_queue, create_status_table

ITEMS = [f"tile-{n:02d}" for n in range(25)]
#: Two children that failed, with their reasons as Batch gives them.
TWO_FAILED = {3: "Essential container in task exited (exit code 2)", 17: "Host EC2 terminated"}
#: Lambda retries a failed async invocation twice.
LAMBDA_RETRIES = 2


class ArrayChildren:
    """A Batch client whose ListJobs of an array's children answers ``children`` ({index: (status, reason)}).

    The real ListJobs call is made first, through the wrapped client: a fault on it (a proxy in front of the
    emulator) surfaces as Batch's would, after the client's own retries; only the children it lists are
    replaced. Everything else is the wrapped client's."""

    def __init__(self, client: Any, children: dict[int, tuple[str, str]]) -> None:
        self.client, self.children = client, children

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def get_paginator(self, operation: str) -> Any:
        paginator = self.client.get_paginator(operation)
        children = self.children

        class Paginator:
            def paginate(self, **params: Any) -> list[dict[str, Any]]:
                pages = list(paginator.paginate(**params))
                if "arrayJobId" not in params:
                    return pages
                listed = [
                    {
                        "jobId": f"{params['arrayJobId']}:{index}",
                        "status": status,
                        "statusReason": reason,
                        "arrayProperties": {"index": index},
                    }
                    for index, (status, reason) in children.items()
                    if status == params["jobStatus"]
                ]
                return [{"jobSummaryList": listed[:10]}, {"jobSummaryList": listed[10:]}]  # two pages

        return Paginator()


class FanOutWorld:
    """A chain ``maps``: ``split`` (message link) -> ``work`` (the fan-out, ``fan_out`` its settings) -> ``join``."""

    def __init__(self, session: Any, fan_out: dict[str, Any]) -> None:
        name = uuid.uuid4().hex[:8]
        self.queue, self.definitions = create_batch_queue(session, name, ["split", "work", "join"])
        self.table = create_status_table(session.resource("dynamodb"), f"status{name}")
        self.bucket = f"data{name}"
        self.s3, self.batch = session.client("s3"), session.client("batch")
        self.s3.create_bucket(Bucket=self.bucket)
        self.topic = f"arn:aws:sns:us-east-1:123456789012:maps{name}"
        self.policy = "continue" if fan_out.get("onChildFailure") == "continue" else "fail_run"
        work = {"name": "work", "jobDefinition": self.definitions["work"], "link": {"kind": "success"}}
        self.config = {
            "table": self.table.name,
            "chains": {
                "maps": {
                    "jobQueue": self.queue,
                    "topicArn": self.topic,
                    "table": self.table.name,
                    "claims": {"bucket": self.bucket, "prefix": "maps/_messages/"},
                    "items": {"bucket": self.bucket, "prefix": "maps/_items/"},
                    "steps": [
                        {"name": "split", "jobDefinition": self.definitions["split"], "link": {"kind": "message"}},
                        work | {"fanOut": {"source": "message", "field": None, "maxItems": 10000} | fan_out},
                        {"name": "join", "jobDefinition": self.definitions["join"]},
                    ],
                }
            },
        }
        self.children: dict[int, tuple[str, str]] = {}
        self.submitted: list[dict[str, Any]] = []

    def glue(self, session: Any = None, endpoint: str | None = None) -> glue.Glue:
        """The glue with the clients production makes (its calls to ``endpoint`` if given); every SubmitJob
        request it sends is kept in :attr:`submitted` (once per call, however many glues share the session)."""
        session = session or boto3.session.Session()
        session.events.register(
            "before-parameter-build.batch.SubmitJob",
            lambda params, **_: self.submitted.append(copy.deepcopy(params)),
            unique_id=f"fan-out-world-{id(self)}",
        )
        batch = session.client("batch", endpoint_url=endpoint, config=glue.BATCH_CLIENT_CONFIG)
        return glue.Glue(
            self.config,
            batch=ArrayChildren(batch, self.children),
            dynamodb=session.resource("dynamodb", endpoint_url=endpoint),
            s3=session.client("s3", endpoint_url=endpoint),
        )

    def publish(self, message: str, message_id: str = "m-1") -> dict[str, Any]:
        sns = {"MessageId": message_id, "TopicArn": self.topic, "Message": message, "MessageAttributes": {}}
        return {"Records": [{"EventSource": "aws:sns", "Sns": sns}]}

    def fan_out(self, message: str) -> tuple[dict[str, Any], str]:
        """(the array request, its job id) the glue submitted for ``message``."""
        result = self.glue().handle(self.publish(message))
        (submitted,) = result["submitted"]
        return self.submitted[-1], submitted["jobId"]

    def end_children(self, failed: dict[int, str] | None = None, count: int = len(ITEMS)) -> None:
        """Every child ended: those in ``failed`` ({index: reason}) FAILED, the others SUCCEEDED."""
        self.children.update({index: ("SUCCEEDED", "") for index in range(count)})
        self.children.update({index: ("FAILED", reason) for index, reason in (failed or {}).items()})

    def ended(self, request: dict[str, Any], job_id: str, status: str) -> dict[str, Any]:
        """The terminal state change of the job ``request`` submitted, as Batch sends it."""
        detail = {
            "jobId": job_id,
            "jobName": request["jobName"],
            "status": status,
            "jobDefinition": request["jobDefinition"],
            "container": {"environment": request["containerOverrides"]["environment"]},
        }
        if "arrayProperties" in request:
            detail["arrayProperties"] = {"size": request["arrayProperties"]["size"]}
        return {"source": "aws.batch", "detail-type": "Batch Job State Change", "detail": detail}

    def env(self, request: dict[str, Any]) -> dict[str, str]:
        return {e["name"]: e["value"] for e in request["containerOverrides"]["environment"]}

    def rows(self) -> list[dict[str, Any]]:
        return self.table.scan(ConsistentRead=True)["Items"]

    def child_rows(self) -> list[dict[str, Any]]:
        return sorted((r for r in self.rows() if r["sk"].startswith("child#")), key=lambda r: r["sk"])

    def runs(self) -> dict[str, Any]:
        rows = [row for row in self.rows() if row["sk"].startswith("run#")]
        return operator.chain_runs(rows, ["split", "work", "join"])

    def jobs_named(self, name: str) -> list[dict[str, Any]]:
        """The jobs of that name, array children left out (moto lists them in the queue under their parent's name)."""
        listed = self.batch.list_jobs(jobQueue=self.queue, filters=[{"name": "JOB_NAME", "values": [name]}])
        return [job for job in listed["jobSummaryList"] if job["jobName"] == name and ":" not in job["jobId"]]

    # ------------------------------------------------------------ what the glue should have left

    def child_rows_wrong(self, parent_job_id: str) -> int:
        """How many children have no row, or one whose state, reason or item is not the child's."""
        rows = {int(r["child_index"]): r for r in self.child_rows() if r["parentJobId"] == parent_job_id}
        wrong = 0
        for index, item in enumerate(ITEMS):
            status, reason = self.children[index]
            row = rows.get(index) or {}
            wrong += (row.get("status"), row.get("reason"), row.get("item")) != (status, reason or "-", item)
        return wrong

    def expected_joins(self) -> int:
        """1, unless a child failed under ``fail_run``."""
        failed = any(status != "SUCCEEDED" for status, _ in self.children.values())
        return 0 if failed and self.policy == "fail_run" else 1

    def summary_wrong(self, parent_job_id: str) -> list[str]:
        """What is wrong with the fan-out's status row and its run after the fan-in (nothing: [])."""
        failed = [
            {"index": index, "reason": reason}
            for index, (status, reason) in sorted(self.children.items())
            if status != "SUCCEEDED"
        ]
        rows = [r for r in self.rows() if r["sk"].startswith("run#") and r.get("jobId") == parent_job_id]
        if len(rows) != 1:
            return [f"{len(rows)} status rows of the fan-out"]
        row, run = rows[0], self.runs().get(str(rows[0]["chain_run"]), {})
        problems = []
        counts = (row.get("children_total"), row.get("children_succeeded"), row.get("children_failed"))
        if counts != (len(ITEMS), len(ITEMS) - len(failed), len(failed)) or row.get("failed_children") != failed:
            problems.append(f"children counted {counts}, failed {row.get('failed_children')}")
        named = glue.failed_children_reason(failed, len(ITEMS)) if failed else "-"
        if (row["status"], row["reason"]) != ("FAILED" if failed else "SUCCEEDED", named):
            problems.append(f"row {row['status']}: {row['reason']}")
        expected_run = ("FAILED", named) if self.expected_joins() == 0 else ("RUNNING", "")
        if (run.get("status"), run.get("reason")) != expected_run:
            problems.append(f"run {run.get('status')}: {run.get('reason')}")
        return problems

    def fan_out_wrong(self, message_id: str = "m-1") -> list[str]:
        """What is wrong after the fan-out's submission: a status row (a refused list), a wrong items object."""
        problems = [f"row {r['status']}: {r['reason']}" for r in self.rows() if r["sk"].startswith("run#")]
        key = f"maps/_items/maps-{message_id}/{message_id}/work.json"
        try:
            stored = json.loads(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read())
        except self.s3.exceptions.NoSuchKey:
            stored = None  # the list was refused before it was stored
        if stored != ITEMS:
            problems.append("no items object" if stored is None else "the items object differs from the list")
        return problems


def lambda_retried(deliver: Callable[[Any], Any], pause: float = 1.0) -> Callable[[Any], Any]:
    """``deliver(session)`` as Lambda runs an async invocation: tried again :data:`LAMBDA_RETRIES` times
    (``pause`` s apart) while it raises; the last error if every try failed."""

    def with_retries(session: Any) -> Any:
        for attempt in range(LAMBDA_RETRIES + 1):
            try:
                return deliver(session)
            except Exception:
                if attempt == LAMBDA_RETRIES:
                    raise
                time.sleep(pause)
        return None

    return with_retries
