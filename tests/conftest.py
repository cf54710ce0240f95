"""Shared fixtures: the example app is synthesized once per test session and read back from its assembly."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest
from aws_cdk.assertions import Template

from bench.duplicates import create_batch_queue  # noqa: F401 - shared with the tests
from pipeline_constructs.assembly import SynthesizedStack, load_assembly

ROOT = Path(__file__).resolve().parent.parent
ASSET_HASH = re.compile(r"\b[0-9a-f]{64}\b")


def cdk_json_context() -> dict[str, Any]:
    """The context `cdk synth` would pass: cdk.json's, without the CLI."""
    return json.loads((ROOT / "cdk.json").read_text())["context"]


def synth_example(outdir: Path, extra_context: dict[str, Any] | None = None):
    """Build and synthesize the example app into ``outdir``; returns the app (for tree inspection)."""
    import app as example_app

    context = cdk_json_context() | {"aws:cdk:version-reporting": False} | (extra_context or {})
    app = example_app.build_app(context, outdir=str(outdir))
    app.synth()
    return app


@pytest.fixture(scope="session")
def example_synth(tmp_path_factory: pytest.TempPathFactory):
    """(app, outdir) of the example app, every environment, synthesized once for the whole session."""
    outdir = tmp_path_factory.mktemp("cdk.out")
    return synth_example(outdir), outdir


@pytest.fixture(scope="session")
def example_stacks(example_synth) -> dict[str, SynthesizedStack]:
    _, outdir = example_synth
    return {stack.name: stack for stack in load_assembly(outdir)}


@pytest.fixture(scope="session")
def dev_template(example_stacks) -> Template:
    return Template.from_json(example_stacks["pipeline-dev"].template)


@pytest.fixture(scope="session")
def prod_template(example_stacks) -> Template:
    return Template.from_json(example_stacks["pipeline-prod"].template)


def mask_asset_hashes(template: dict[str, Any]) -> dict[str, Any]:
    """Asset hashes change with every code edit; snapshots should change only when the infrastructure does."""
    return json.loads(ASSET_HASH.sub("<asset-hash>", json.dumps(template)))


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto server on loopback for the session; tests isolate themselves by resource names."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns real failures
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def aws_env(moto_endpoint) -> dict[str, str]:
    """Environment for boto3, in this process and in worker processes: the emulator, fake credentials."""
    return {
        "AWS_ENDPOINT_URL": moto_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


@pytest.fixture
def aws(aws_env, monkeypatch):
    """boto3 clients against the emulator."""
    import boto3

    for name, value in aws_env.items():
        monkeypatch.setenv(name, value)
    session = boto3.session.Session()
    return type(
        "Aws",
        (),
        {
            "sqs": session.client("sqs"),
            "s3": session.client("s3"),
            "dynamodb": session.resource("dynamodb"),
            "session": session,
        },
    )


def create_status_table(dynamodb, name: str):
    """A table shaped like the StatusStore's (pk, sk), in the emulator."""
    from pipeline_constructs.worker.status import TABLE_KEYS

    return dynamodb.create_table(TableName=name, BillingMode="PAY_PER_REQUEST", **TABLE_KEYS)


@pytest.fixture
def pipeline(aws):
    """``pipeline(visibility=..., max_receive_count=...)``: a fresh queue, DLQ, bucket and table; its worker
    processes are killed when the test ends."""
    from worker_harness import Pipeline

    created = []

    def make(**kwargs) -> Pipeline:
        created.append(Pipeline(aws, **kwargs))
        return created[-1]

    yield make
    for made in created:
        made.kill_all()
