"""The local run serves an app that is not the example: a user's own, as issue 22's new user wrote one (an
explicit account, registry-image steps, a worker directory whose lock holds a package of its own, their own
input files), run end to end once and judged on what each part did."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from pipeline_constructs.local import cli
from pipeline_constructs.local.batch import JobDefinitionSpec, LocalBatch
from pipeline_constructs.local.fleets import LocalFleet, WorkerRequirementsError, worker_python
from tests.support import ROOT

ACCOUNT = "111111111111"
MISSING_COMMAND = "renderer-not-installed-here"

TASK = """
import json

import local_probe  # from the fleet's requirements.lock: installed only in the workers' environment


def run(task) -> dict:
    data = task.read_input()
    task.write_output("size.json", json.dumps({"bytes": len(data), "probe": local_probe.VALUE}))
    return {"bytes": len(data)}
"""


def probe_wheel(directory: Path, value: str = "probed") -> tuple[str, str]:
    """A pure-Python wheel of ``local_probe`` (a package this interpreter does not have) in ``directory``:
    (its requirement line, its sha256)."""

    def record_hash(data: bytes) -> str:
        return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()

    files = {
        "local_probe.py": f"VALUE = {value!r}\n".encode(),
        "local_probe-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: local-probe\nVersion: 1.0\n",
        "local_probe-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
        b"Tag: py3-none-any\n",
    }
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n" for name, data in files.items())
    files["local_probe-1.0.dist-info/RECORD"] = (record + "local_probe-1.0.dist-info/RECORD,,\n").encode()
    wheel = directory / "local_probe-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return "local-probe==1.0", hashlib.sha256(wheel.read_bytes()).hexdigest()


def worker_directory(directory: Path) -> Path:
    """The user's worker directory: their task, the sample's lock (boto3 for the runtime) and its wheels, plus
    their own package, locked and shipped."""
    directory.mkdir(parents=True)
    (directory / "task.py").write_text(TASK)
    shutil.copytree(ROOT / "worker_images" / "sqs_worker" / "wheels", directory / "wheels")
    requirement, digest = probe_wheel(directory / "wheels")
    lock = (ROOT / "worker_images" / "sqs_worker" / "requirements.lock").read_text()
    (directory / "requirements.lock").write_text(f"{lock.rstrip()}\n{requirement} \\\n    --hash=sha256:{digest}\n")
    return directory


def synth_user_app(outdir: Path, worker_dir: Path) -> None:
    import aws_cdk as cdk

    from pipeline_constructs import (
        BatchChain,
        ChainLink,
        ChainStep,
        DataBucket,
        PipelineNetwork,
        ScheduledTrigger,
        SpotWorkerFleet,
        StepImage,
    )

    app = cdk.App(outdir=str(outdir), context={"aws:cdk:version-reporting": False})
    stack = cdk.Stack(app, "Mine", env=cdk.Environment(account=ACCOUNT, region="eu-west-1"))
    data = DataBucket(stack, "Data")
    network = PipelineNetwork(stack, "Network", availability_zones=["eu-west-1a", "eu-west-1b"])
    SpotWorkerFleet(stack, "Thumbs", worker_directory=worker_dir, task="task:run", bucket=data.bucket, network=network)
    python = StepImage.from_registry("public.ecr.aws/docker/library/python:3.13-slim")
    chain = BatchChain(
        stack,
        "Nightly",
        bucket=data.bucket,
        network=network,
        max_vcpus=16,
        steps=[
            ChainStep(
                name="fetch", image=python, command=["python", "-c", "print('fetched')"], link=ChainLink.on_success()
            ),
            ChainStep(
                name="render", image=StepImage.from_registry("ghcr.io/me/renderer:1.0"), command=[MISSING_COMMAND]
            ),
        ],
    )
    ScheduledTrigger(stack, "Daily", schedule="cron(0 3 * * ? *)", chain=chain)
    app.synth()


@pytest.fixture(scope="module")
def user_run(tmp_path_factory) -> tuple[int, dict, str, Path]:
    """The user's app synthesized and run once with their own inputs and its schedule fired:
    (exit code, result, what the command printed, its logs)."""
    tmp_path = tmp_path_factory.mktemp("any-app")
    outdir = tmp_path / "cdk.out"
    synth_user_app(outdir, worker_directory(tmp_path / "thumbs"))
    inputs = tmp_path / "photos"
    (inputs / "2026").mkdir(parents=True)
    for name in ("a.jpg", "b.jpg", "2026/c.jpg"):
        (inputs / name).write_bytes(b"not really a picture " + name.encode())
    result_file, logs = tmp_path / "result.json", tmp_path / "logs"
    capture = pytest.MonkeyPatch()
    capture.setenv("PIPELINE_LOCAL_CACHE", str(tmp_path_factory.getbasetemp() / "local-cache"))
    printed = io.StringIO()
    try:
        with redirect_stdout(printed):
            target = ["--assembly", str(outdir), "--stack", "Mine", "--quiet", "--logs", str(logs)]
            code = cli.main([*target, "--json", str(result_file), "--inputs", str(inputs), "--fire", "Daily"])
    finally:
        capture.undo()
    return code, json.loads(result_file.read_text()), printed.getvalue(), logs


def test_a_registry_image_step_runs_its_command_when_it_exists_here(user_run):
    _, result, _, logs = user_run
    fetch = next(j for j in result["jobs"] if j["step"] == "fetch")
    # As AWS gives a job that succeeded: no status reason ("Essential container in task exited" is a failure's).
    assert (fetch["status"], fetch["reason"]) == ("SUCCEEDED", "")
    assert "fetched" in "".join(p.read_text() for p in logs.glob("job-*fetch*.log"))


def test_a_registry_image_step_whose_command_is_not_here_fails_at_once_saying_why(user_run):
    code, result, printed, _ = user_run
    render = next(j for j in result["jobs"] if j["step"] == "render")
    expected = (
        "image ghcr.io/me/renderer:1.0 is not built from a local directory and its command "
        f"{MISSING_COMMAND} does not exist here"
    )
    assert (render["status"], render["reason"]) == ("FAILED", expected)
    assert code == 1 and not result["timed_out"]  # failed at once, not RUNNING until the timeout
    assert any(expected in reason["reason"] for reason in result["reasons"])
    assert expected in printed  # the summary says why


def test_an_app_with_an_explicit_account_runs_its_schedule_and_chain(user_run):
    _, result, _, _ = user_run
    # The glue read its chain's parameters (ssm:GetParametersByPath on the stack's own account) and started it.
    assert result["iam"]["denied"] == [] and result["deliveries"]["denied"] == []
    assert [j["step"] for j in result["jobs"]] == ["fetch", "render"]
    # In the account and region the app names, as they are: its jobs' ARNs and the resources the run made.
    assert (result["account"], result["region"]) == (ACCOUNT, "eu-west-1")
    assert all(j["arn"].startswith(f"arn:aws:batch:eu-west-1:{ACCOUNT}:job/") for j in result["jobs"])


def test_the_users_own_inputs_are_done_by_workers_with_their_locked_requirements(user_run):
    _, result, printed, _ = user_run
    ((name, thumbs),) = result["fleets"].items()
    assert name.endswith("/Thumbs")
    assert (thumbs["expected"], thumbs["done"], thumbs["dead"], thumbs["restarts"]) == (3, 3, 0, 0)
    assert "sent 3 input file(s)" in printed
    # Each file under the fleet's input prefix, named by its path under the folder (as `pipeline submit` does).
    assert (
        sum(count for prefix, count in result["objects"].items() if "/input/" in prefix or prefix.endswith("input/"))
        >= 3
    )


def test_the_summary_tables_keep_their_headers_whole(user_run):
    _, _, printed, _ = user_run
    assert "status rows" in printed and "attempts" in printed and "drained" in printed


def test_a_worker_restart_keeps_its_reason_and_log(tmp_path):
    runtime = ROOT / "pipeline_constructs" / "fleet" / "worker"
    fleet = LocalFleet(
        "Mine/Broken",
        environment={},  # no PIPELINE_* settings: each worker stops at once, saying which is missing
        task_dir=tmp_path,
        runtime_dir=runtime,
        workers=1,
        log_dir=tmp_path,
        watch_spot=False,
    )
    try:
        fleet.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not fleet.restart_reasons:
            time.sleep(0.2)
    finally:
        fleet.stop()
    ((reason, restart),) = fleet.restart_reasons.items()
    assert reason.startswith("exit code ") and "PIPELINE_" in reason, reason
    assert restart.count >= 1 and Path(restart.log).is_file()


def test_a_lock_that_does_not_install_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_LOCAL_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "worker"
    (directory / "wheels").mkdir(parents=True)
    requirement, _ = probe_wheel(directory / "wheels")
    (directory / "requirements.lock").write_text(f"{requirement} --hash=sha256:{'0' * 64}\n")
    with pytest.raises(WorkerRequirementsError) as raised:
        worker_python(directory, fleet="Mine/Thumbs", log_dir=tmp_path)
    message = str(raised.value)
    assert message.startswith("fleet Mine/Thumbs: its worker requirements did not install: ")
    assert "hash" in message.lower() and str(tmp_path / "requirements-Thumbs.log") in message
    assert not list((tmp_path / "cache" / "worker-venvs").iterdir())  # nothing half-built left to reuse


def test_a_worker_environment_is_installed_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("PIPELINE_LOCAL_CACHE", str(tmp_path / "cache"))
    directory = tmp_path / "worker"
    (directory / "wheels").mkdir(parents=True)
    requirement, digest = probe_wheel(directory / "wheels", value="cached")
    (directory / "requirements.lock").write_text(f"{requirement} --hash=sha256:{digest}\n")
    python = worker_python(directory, fleet="Mine/Thumbs", log_dir=tmp_path)
    assert python != sys.executable
    assert worker_python(directory, fleet="Mine/Thumbs", log_dir=tmp_path / "elsewhere") == python
    assert not (tmp_path / "elsewhere" / "requirements-Thumbs.log").exists()  # reused: nothing installed again
    probe = subprocess.run(
        [python, "-c", "import local_probe, boto3; print(local_probe.VALUE)"], capture_output=True, text=True
    )
    assert probe.stdout.strip() == "cached", probe.stderr


def test_an_error_in_a_job_thread_fails_the_job_with_its_reason(tmp_path):
    """Whatever goes wrong while a job is started (here: its image directory lost its Dockerfile) fails the
    job at once with the error as its reason, never a thread dying and the job RUNNING until a timeout."""
    spec = JobDefinitionSpec(
        arn="arn:aws:batch:eu-west-1:1:job-definition/broken:1",
        name="broken",
        environment={},
        image_dir=tmp_path,
        command=None,
    )
    events: list[dict] = []
    batch = LocalBatch(
        {spec.arn: spec}, {"queue"}, base_environment={}, emit=events.append, log_dir=tmp_path, region="eu-west-1"
    )
    try:
        job_id = batch.submit({"jobQueue": "queue", "jobDefinition": "broken", "jobName": "broken-1"})["jobId"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and batch.busy():
            time.sleep(0.05)
        (job,) = batch.describe([job_id])
    finally:
        batch.close()
    assert job["status"] == "FAILED"
    assert job["statusReason"].startswith("local run error: FileNotFoundError: "), job["statusReason"]
    assert events[-1]["detail"]["status"] == "FAILED"  # and the glue hears of it, as of any failed job
