"""Which chain runs `pipeline status` and `pipeline report` show: the most recent (by when their rows last
changed, not by name), the newest last; a fan-out step's children told as failures counted; and a `--run` the
chain does not have named as such."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from typer.testing import CliRunner

from pipeline_constructs.glue import handler as glue
from pipeline_constructs.ops import cli, operator, report
from tests.ops.test_fan_out_status import deploy_chain

T0 = 1_780_000_000  # epoch seconds
STEPS = ["split", "work", "join"]
NEWEST = "Mapper-59036e4a"  # the user's run: the newest, and the first by name
#: Runs as the glue leaves them: run -> when each of its job rows was last written (seconds after T0), by step.
#: 7a started before 5d6b but its second step ended after a1: a run is as recent as its latest row.
RUNS = {
    "Mapper-c4a2e011": [100],
    "Mapper-5d6b0f3c": [200],
    "Mapper-e9d17b42": [300],
    "Mapper-7a3c55d0": [150, 450],
    "Mapper-a1f08e9b": [400],
    NEWEST: [500, 510],
}
#: The five most recent, the newest last; by name the last five would leave out the newest.
SHOWN = ["Mapper-5d6b0f3c", "Mapper-e9d17b42", "Mapper-a1f08e9b", "Mapper-7a3c55d0", NEWEST]


def job_row(run: str, index: int, status: str, **more: Any) -> dict[str, Any]:
    return {
        "pk": "chain#maps",
        "sk": f"run#{run}#{index:02d}#j-{run}-{index}",
        "chain_run": run,
        "step": STEPS[index],
        "status": status,
        "reason": "-",
        **more,
    }


def mapper_rows() -> list[dict[str, Any]]:
    """The job rows of RUNS (the newest failed in its second step), and a child row of the oldest run written
    after all of them: a fan-out child is no run and does not make its run recent."""
    rows = []
    for run, written in RUNS.items():
        for index, moment in enumerate(written):
            status = "FAILED" if run == NEWEST and index == 1 else "SUCCEEDED"
            rows.append(job_row(run, index, status, updated_at=Decimal(T0 + moment)))
    child = {"chain_run": "Mapper-c4a2e011", "step": "work", "status": "FAILED", "updated_at": Decimal(T0 + 600)}
    return [*rows, {"pk": "chain#maps", "sk": glue.child_key("Mapper-c4a2e011", 1, "j-work", 0), **child}]


def test_status_shows_the_most_recent_runs_newest_last_not_the_last_by_name():
    runs = operator.chain_runs(mapper_rows(), STEPS)
    assert list(runs) == SHOWN
    assert runs[NEWEST]["status"] == "FAILED" and runs[NEWEST]["steps"] == {"split": "SUCCEEDED", "work": "FAILED"}
    assert list(operator.chain_runs(mapper_rows(), STEPS, latest=0)) == ["Mapper-c4a2e011", *SHOWN]


def test_report_shows_the_same_runs_in_the_same_order_as_status():
    figures = report.chain_figures("maps", mapper_rows(), STEPS, report.Pricing.from_table(), runs=5)
    assert [run["run"] for run in figures["runs"]] == SHOWN
    assert figures["runs"][-1]["status"] == "FAILED"


def test_rows_without_updated_at_are_ordered_by_batchs_times_and_rows_without_any_time_come_first():
    rows = [
        job_row("a", 0, "SUCCEEDED", stoppedAt=Decimal((T0 + 200) * 1000)),  # Batch's times are milliseconds
        job_row("b", 0, "RUNNING", createdAt=Decimal((T0 + 300) * 1000)),
        job_row("c", 0, "SUCCEEDED", updated_at=Decimal(T0 + 250)),
        job_row("z", 0, "SUBMITTED"),
        job_row("y", 0, "SUBMITTED"),
    ]
    assert list(operator.chain_runs(rows, STEPS, latest=0)) == ["y", "z", "a", "c", "b"]


def test_status_of_a_stack_lists_its_newest_run(aws):
    stack, table = deploy_chain(aws)
    glue.batch_write(aws.dynamodb, table, mapper_rows())
    result = CliRunner().invoke(cli.app, ["status", "--stack", stack, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.output)["chains"]["maps"]) == SHOWN


def test_report_of_a_run_the_chain_does_not_have_names_it_lists_the_latest_runs_and_fails(aws, monkeypatch):
    stack, table = deploy_chain(aws)
    rows = mapper_rows()
    rows[0] |= {"chain_run": "Mapper-[retry]", "sk": "run#Mapper-[retry]#00#j-retry"}  # user's text, not markup
    glue.batch_write(aws.dynamodb, table, rows)
    monkeypatch.setattr(cli.console, "_width", 400)
    result = CliRunner().invoke(cli.app, ["report", "--stack", stack, "--chain", "maps", "--run", "nope"])
    assert result.exit_code == 1, result.output
    newest_first = ", ".join(reversed(SHOWN))
    assert f"chain maps has no run 'nope'; its latest runs, newest first: {newest_first}" in result.output

    rows = [job_row("Mapper-[retry]", 0, "SUCCEEDED", updated_at=Decimal(T0 + 900))]
    glue.batch_write(aws.dynamodb, table, rows)
    result = CliRunner().invoke(cli.app, ["report", "--stack", stack, "--chain", "maps", "--run", "nope"])
    assert f"newest first: Mapper-[retry], {NEWEST}," in result.output
    result = CliRunner().invoke(cli.app, ["report", "--stack", stack, "--chain", "maps", "--run", NEWEST])
    assert result.exit_code == 0 and NEWEST in result.output and "no runs" not in result.output


def test_a_fan_out_steps_state_counts_its_failed_children_not_its_succeeded_ones():
    def work(status: str, succeeded: int, **more: Any) -> str:
        row = job_row("r", 1, status, children_total=Decimal(4), children_succeeded=Decimal(succeeded), **more)
        return operator.chain_runs([row], STEPS)["r"]["steps"]["work"]

    assert work("FAILED", 3) == "FAILED: 1 of 4 children failed"
    assert work("FAILED", 1, continued=True) == "FAILED: 3 of 4 children failed, continued"
    assert work("SUCCEEDED", 4) == "SUCCEEDED: all 4 children succeeded"
