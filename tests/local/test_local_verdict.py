"""The local run's verdict on a chain's fan-out: a fan-out whose run went on without its failed children
(``onChildFailure`` ``continue``) fails nothing, one that failed its run (``fail_run``) does, and a fan-out
the glue refused (no job, only its status row) is named and fails the run."""

from __future__ import annotations

import json
import uuid
from types import SimpleNamespace
from typing import Any

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.local.batch import JobDefinitionSpec, LocalJob
from pipeline_constructs.local.clients import EmulatorClients
from pipeline_constructs.local.progress import Progress, job_outcomes
from pipeline_constructs.local.report import all_completed, batch_jobs
from tests.support.resources import create_status_table

SPEC = JobDefinitionSpec(
    arn="arn:aws:batch:us-east-1:1:job-definition/work:1", name="work", environment={}, image_dir=None, command=[]
)
CHILD_FAILED = "Essential container in task exited (exit code 2)"


def fan_out_job(job_id: str, failed_children: set[int], size: int = 4) -> LocalJob:
    """A finished array job of ``size`` children, those in ``failed_children`` FAILED (and so the parent)."""
    parent = LocalJob(job_id, f"chain-work-{job_id}", "queue", SPEC, {}, {}, array_size=size)
    for index in range(size):
        failed = index in failed_children
        child = LocalJob(f"{job_id}:{index}", parent.name, "queue", SPEC, {}, {}, array_index=index, parent=parent)
        child.status, child.status_reason = ("FAILED", CHILD_FAILED) if failed else ("SUCCEEDED", "")
        parent.children.append(child)
    parent.status = "FAILED" if failed_children else "SUCCEEDED"
    return parent


def run_row(job_id: str, status: str, **attributes: Any) -> dict[str, Any]:
    """A chain job's status row as :meth:`.Progress.chain_run_rows` gives it."""
    return {"chain": "tiles", "chain_run": "run-1", "step": "work", "jobId": job_id, "status": status} | attributes


def job_entry(status: str) -> dict[str, Any]:
    """A job of the run's result (:func:`.report.batch_jobs`)."""
    return {"name": "j", "arn": "a", "step": "work", "run": "run-1", "status": status, "attempts": 1, "reason": ""}


def test_a_fan_out_that_continued_past_failed_children_is_no_failure_of_the_run():
    job = fan_out_job("f1", failed_children={1})
    rows = [run_row("f1", "FAILED", continued=True, children_failed=1)]
    failures, notes = job_outcomes([job, *job.children], rows)
    assert failures == []
    assert notes == [
        {
            "what": "job chain-work-f1: 1 of 4 child jobs FAILED; its run continued with the rest",
            "reason": f"child 1: {CHILD_FAILED}",
            "log": "",
        }
    ]
    (entry,) = batch_jobs(SimpleNamespace(jobs={"f1": job}), continued={"f1"})  # type: ignore[arg-type]
    assert entry["status"] == "FAILED" and entry["continued"]
    assert all_completed([entry], {}, {}, {}, denied=[])


def test_a_fan_out_that_failed_its_run_on_a_failed_child_still_fails_the_local_run():
    job = fan_out_job("f2", failed_children={0, 3})
    rows = [run_row("f2", "FAILED", children_failed=2)]  # fail_run: no join, no `continued`
    failures, notes = job_outcomes([job, *job.children], rows)
    assert [f["what"] for f in failures] == ["job chain-work-f2: 2 of 4 child jobs FAILED"]
    assert notes == []
    assert not all_completed([job_entry("FAILED") | {"continued": False}], {}, {}, {}, denied=[])


def test_a_fan_out_the_glue_refused_without_a_job_is_named_and_fails_the_run():
    previous = LocalJob("s1", "chain-split-s1", "queue", SPEC, {}, {}, status="SUCCEEDED")
    refused = "fan-out refused: the manifest s3://b/m.txt cannot be read: NoSuchKey"
    rows = [run_row("s1", "SUCCEEDED", step="split"), run_row("no-job-msg-1", "FAILED", reason=refused)]
    failures, _ = job_outcomes([previous], rows)
    assert failures == [
        {"what": "chain tiles run run-1: step work FAILED, no job submitted", "reason": refused, "log": ""}
    ]
    assert all_completed([job_entry("SUCCEEDED")], {}, {}, {}, denied=[])
    assert not all_completed([job_entry("SUCCEEDED")], {}, {}, {}, denied=[], jobless_failures=failures)


def test_the_local_run_reads_the_rows_the_glue_wrote_under_each_chain_of_its_configuration(aws, aws_env):
    """The rows come from the status table each chain's parameter names (the glue's configuration, read as
    the glue reads it), as the glue writes them: a continued fan-out and a refused one."""
    suffix = uuid.uuid4().hex[:8]
    table, path = f"status-{suffix}", f"/verdict-{suffix}/glue"
    create_status_table(aws.dynamodb, table)
    chain = {
        "table": table,
        "steps": [{"name": "split", "jobDefinition": "split"}, {"name": "work", "jobDefinition": "work"}],
    }
    clients = EmulatorClients(aws_env["AWS_ENDPOINT_URL"], aws_env["AWS_DEFAULT_REGION"])
    clients.ssm.put_parameter(Name=f"{path}/tiles", Value=json.dumps(chain), Type="String")
    writer = glue.Glue({"chains": {"tiles": chain}}, batch=None, dynamodb=aws.dynamodb)
    continued = {"chain": "tiles", "chain_config": chain, "index": 1, "step": "work", "job_id": "f1", "job_name": "w"}
    continued |= {"status": "FAILED", "reason": "1 of 4 children failed", "run": "run-1", "attempts": 1}
    writer.record(continued | {"timestamps": {}, "array_child": False}, {"continued": True, "children_failed": 1})
    writer.fan_outs._record_unsubmitted("tiles", 1, "run-2", "msg-2", "FAILED", "fan-out refused: not a list")
    glue_function = SimpleNamespace(environment={"GLUE_CONFIG": json.dumps({"chainsPath": path})})
    job = fan_out_job("f1", failed_children={2})
    batch = SimpleNamespace(jobs={"f1": job})
    compute = SimpleNamespace(functions={"arn:glue": glue_function}, batch=batch, fleets={})
    progress = Progress(clients, compute, triggers=None, iam=None)  # type: ignore[arg-type]

    rows = progress.chain_run_rows()
    notes, failures = progress.notes(rows), progress.reasons(rows)
    assert [note["what"] for note in notes] == [
        "job chain-work-f1: 1 of 4 child jobs FAILED; its run continued with the rest"
    ]
    assert failures == [
        {
            "what": "chain tiles run run-2: step work FAILED, no job submitted",
            "reason": "fan-out refused: not a list",
            "log": "",
        }
    ]
