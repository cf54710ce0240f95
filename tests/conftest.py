"""Shared fixtures: the example app is synthesized once per test session and read back from its assembly."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import logging
import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from pipeline_constructs.local import emulator_as_aws_behaves
from pipeline_constructs.ops.assembly import SynthesizedStack, load_assembly
from tests.support import ROOT
from tests.support.botocore_models import MODELS
from tests.support.example_app import synth_example

if TYPE_CHECKING:
    from aws_cdk.assertions import Template

#: Every process of the run makes its temporary files in one folder, removed when the run ends.
pytest_plugins = ("tests.support.temp_root",)


def _shared_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory every test process of this run sees: xdist gives each worker a directory of its own
    under the run's directory."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def example_outdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example app's cloud assembly, every environment, synthesized once for the whole run: the first
    test process to need it synthesizes it under a lock, the others read it (a synth costs seconds of CPU)."""
    shared = _shared_temp(tmp_path_factory)
    outdir = shared / "example-cdk.out"
    with (shared / "example-cdk.out.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not outdir.exists():
            building = shared / f"example-cdk.out.{os.getpid()}"
            synth_example(building)
            building.rename(outdir)  # whole or not at all, for the processes waiting on the lock
    return outdir


@pytest.fixture(scope="session")
def example_stacks(example_outdir: Path) -> dict[str, SynthesizedStack]:
    return {stack.name: stack for stack in load_assembly(example_outdir)}


@pytest.fixture(scope="session")
def dev_template(example_stacks) -> Template:
    from aws_cdk.assertions import Template  # here: the controlling process, which runs no test, starts no jsii

    return Template.from_json(example_stacks["pipeline-dev"].template)


@pytest.fixture(scope="session")
def prod_template(example_stacks) -> Template:
    from aws_cdk.assertions import Template

    return Template.from_json(example_stacks["pipeline-prod"].template)


def share_botocore_models() -> None:
    """One botocore data loader for every session this test process makes.

    botocore parses its JSON models (endpoints, each service's API) again for every new session, 0.1-0.2 s of
    CPU each time; the tests, the CLI and the glue code under test make hundreds of sessions, some from 20
    threads at once. The loader only caches what it read from disk, so sharing it changes no behaviour. Worker
    and local-run processes are not affected: each parses once, as in production.
    """
    import botocore.session

    def register_shared_loader(session: botocore.session.Session) -> None:
        session._components.lazy_register_component("data_loader", lambda: MODELS)

    botocore.session.Session._register_data_loader = register_shared_loader


share_botocore_models()


def quiet_moto_docker_probe() -> None:
    """Make moto's one-off Docker probe print now, to nowhere, rather than into a test's captured CLI output.

    In a container, moto's Batch job threads ask Docker for its host on first use and print a warning when there
    is no Docker engine; the answer is cached, so one silent call here keeps that print out of every later test.
    """
    from moto import settings

    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere):
        settings.moto_server_host()


@pytest.fixture(scope="session")
def moto_endpoint():
    """One moto server on loopback for the session; tests isolate themselves by resource names."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request drowns real failures
    quiet_moto_docker_probe()
    emulator_as_aws_behaves()  # atomic item operations, as DynamoDB's: the submit-once races rely on them
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def proxy(moto_endpoint):
    """A fault proxy in front of the session's emulator (:class:`pipeline_constructs.local.proxy.FaultProxy`),
    closed after the test."""
    from pipeline_constructs.local.proxy import FaultProxy

    server = FaultProxy(moto_endpoint)
    yield server
    server.close()


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


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any):
    report = yield
    item.stash.setdefault(_FAILED, False)
    item.stash[_FAILED] |= report.failed
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def pipeline(aws, request):
    """``pipeline(visibility=..., max_receive_count=...)``: a fresh queue, DLQ, bucket and table; its worker
    processes are killed when the test ends, and their logs shown when it failed."""
    from tests.support.worker_harness import Pipeline

    created = []

    def make(**kwargs) -> Pipeline:
        created.append(Pipeline(aws, **kwargs))
        return created[-1]

    yield make
    for made in created:
        made.kill_all()
        if request.node.stash.get(_FAILED, False):
            print(made.log_tails())


#: The suite's budget on a warm checkout of this 2-core machine (issue 13): printed after every run.
SUITE_BUDGET_SECONDS = 120
_run_started = time.monotonic()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    stats = terminalreporter.stats
    ran = sum(len([r for r in stats.get(kind, []) if r.when == "call"]) for kind in ("passed", "failed"))
    elapsed = time.monotonic() - _run_started
    workers = getattr(config.option, "numprocesses", None) or 0
    measured = f"{ran} tests in {elapsed:.0f} s wall on {workers or 1} process(es), {os.cpu_count()} cores"
    if not _whole_suite(config, stats):  # install-check's guide tests, `make snapshots`, a -k or -x run
        terminalreporter.write_line(f"part of the suite: {measured}")
    else:
        verdict = "within" if elapsed <= SUITE_BUDGET_SECONDS else "OVER"
        terminalreporter.write_line(f"suite: {measured}: {verdict} the {SUITE_BUDGET_SECONDS} s budget")
    mistakes = [r for kind in ("passed", "failed") for r in stats.get(kind, []) if r.when == "call" and _mistake(r)]
    if mistakes:
        caught = sum(1 for r in mistakes if r.passed)
        terminalreporter.write_line(
            f"user mistakes: {caught} of {len(mistakes)} caught at synth with one line (marker user_mistake)"
        )


def _whole_suite(config: pytest.Config, stats: dict[str, list[Any]]) -> bool:
    """Whether the run took every test of the suite: the suite's folders however named, nothing deselected, not
    stopped at a first failure."""
    given = {(config.invocation_params.dir / arg).resolve() for arg in config.args}
    suite = {(config.rootpath / path).resolve() for path in config.getini("testpaths")}
    return given == suite and not stats.get("deselected") and not config.option.maxfail


def _mistake(report: Any) -> bool:
    return "user_mistake" in getattr(report, "keywords", {})


# ---------------------------------------------------------------- running on several processes (pytest-xdist)

#: Every test that builds constructs or reads a template over jsii, in three units of work, each run by one
#: process: a process pays Node's start-up, the aws-cdk-lib load and the warm-up of its first synth (3-4 s of CPU)
#: once, so the other processes never start that work. Three, not fewer: each is one of the run's longest chains
#: of work, and two made the first one the run's critical path (115 s of 180).
#: A test in no unit that builds constructs (a new module, say) makes its module a unit (see _work_unit).
JSII_UNITS = {
    # First the tests of the example's shared assembly: its process synthesizes it, while the others wait.
    "jsii: the example app": (
        "tests/app/test_control_tower.py",
        "tests/app/test_example_app.py",
        "tests/building_blocks/test_compliance.py",
        "tests/app/test_docstrings.py",
        "tests/local/test_local_run.py::test_the_local_run_follows_a_changed_example_app",
        "tests/ops/test_operator_cli.py::test_cost_reports_a_nat_gateway_with_its_price",
        # The flat paths of the constructs' modules import the CDK.
        "tests/app/test_layout.py::test_a_flat_module_path_still_imports_as_its_new_module",
        "tests/glue/test_guard_mutants.py::test_the_guards_lease_outlives_the_glue_function",
    ),
    "jsii: building blocks, fleets and a user's app": (
        "tests/local/test_any_app.py",  # its shared run synthesizes the user's app in the process
        "tests/building_blocks/test_building_blocks.py",
        "tests/fleet/test_spot_worker_fleet.py",
        "tests/monitoring/test_dashboard.py",
        "tests/chain/test_fan_out_construct.py",
    ),
    "jsii: chains and instances": (
        "tests/chain/test_batch_chain.py",
        "tests/fleet/test_fleet_instances.py",
        "tests/chain/test_runnable_timeout.py",
        "tests/chain/test_updates_arrive.py",
        "tests/fleet/test_worker_kinds.py::test_fleet_",
    ),
}
#: Modules whose tests share a module-scoped fixture too costly to build on several processes: one unit each.
SHARED_FIXTURE_MODULES = (
    "tests/app/test_rule_packs.py",
    "tests/local/test_alarm_delivery.py",
)
#: The order in which work starts. First the example's synth, which most of the rest waits for, and the next
#: longest jsii unit, beside the worker process tests, which mostly wait and leave them the CPU; then the last
#: jsii unit, so that none is left as a long tail; then the local runs and the tests reading the example's
#: assembly.
START_ORDER = (
    JSII_UNITS["jsii: the example app"],
    JSII_UNITS["jsii: building blocks, fleets and a user's app"],
    ("tests/fleet/test_worker_processes.py", "tests/fleet/test_worker_faults.py"),
    JSII_UNITS["jsii: chains and instances"],
    ("tests/local/test_local_run.py", "tests/app/test_rule_packs.py", "tests/local/test_alarm_delivery.py"),
    ("tests/fleet/test_worker_leases.py", "tests/fleet/test_worker_acks.py"),
)


def _start_rank(item: pytest.Item) -> int:
    for rank, prefixes in enumerate(START_ORDER):
        if item.nodeid.startswith(prefixes):
            return rank
    return len(START_ORDER)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=_start_rank)


@functools.cache
def _builds_constructs(module: str) -> bool:
    """Whether a test module JSII_UNITS does not name imports the CDK: its tests load aws-cdk-lib into the Node
    of their process."""
    if any(prefix.startswith(f"{module}::") for prefixes in JSII_UNITS.values() for prefix in prefixes):
        return False  # its tests that build constructs are in a jsii unit already
    return re.search(r"^(import|from) aws_cdk\b", (ROOT / module).read_text(), re.MULTILINE) is not None


def _work_unit(nodeid: str) -> str:
    for unit, prefixes in JSII_UNITS.items():
        if nodeid.startswith(prefixes):
            return unit
    module = nodeid.split("::")[0]
    if nodeid.startswith(SHARED_FIXTURE_MODULES):
        return module
    # A module in no jsii unit that builds constructs (a new one, say) is a unit: one process loads the CDK.
    return module if _builds_constructs(module) else nodeid


def pytest_collection_finish(session: pytest.Session) -> None:
    """What the test modules imported (aws-cdk-lib's bindings, botocore, moto) lives as long as the process,
    and so does most of what the tests add (the emulator's state): the garbage collector walked it all again
    in every full collection, 20-30 s of CPU a run. Frozen, and full collections made rarer, it does not."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 100)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any):
    """Every test a work unit of its own, except the jsii units and the modules in SHARED_FIXTURE_MODULES;
    units start in the order of START_ORDER (the collection's, see pytest_collection_modifyitems), not
    largest first."""
    from xdist.scheduler import LoadScopeScheduling

    class UnitsInStartOrder(LoadScopeScheduling):
        def __init__(self, config: pytest.Config, log: Any = None) -> None:
            super().__init__(config, log)
            config.option.loadscopereorder = False

        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return UnitsInStartOrder(config, log)
