"""docs/guide.md cannot rot: its files are extracted and its two-stack app synthesized with cdk-nag and the
Control Tower controls on, and run locally, as a user would (.ci/install-check makes and runs it in a fresh venv,
then runs this module on what it made)."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline_constructs.ops.assembly import load_assembly
from tests.app.test_rule_packs import scan_rule_packs, stacks_by_name
from tests.app.test_source_conditions import unbound_service_statements
from tests.support import ROOT

GUIDE = ROOT / "docs" / "guide.md"
FILE_BLOCK = re.compile(r"<!-- file: (?P<path>[^ ]+) -->\n```[a-z]*\n(?P<body>.*?)```", re.DOTALL)


def guide_files() -> dict[str, str]:
    return {match["path"]: match["body"] for match in FILE_BLOCK.finditer(GUIDE.read_text())}


def test_the_guide_names_its_files():
    assert set(guide_files()) == {
        "app.py",
        "my_worker/task.py",
        "my_worker/requirements.txt",
        "my_worker/requirements.lock",
        "cdk.json",
        "my_step/Dockerfile",
        "my_step/summarize.py",
    }


def test_the_guides_lock_is_the_sample_workers_whose_wheels_make_setup_fetches():
    """One set of pinned wheels to review: .ci/install-check fetches them from the guide's lock, as the guide
    says, and the suite's local runs use those make setup fetched from the sample's."""
    sample = ROOT / "worker_images" / "sqs_worker" / "requirements.lock"
    locked = [line for line in sample.read_text().splitlines() if not line.startswith("#")]
    assert guide_files()["my_worker/requirements.lock"].splitlines() == locked


#: Where jsii keeps the CDK libraries it unpacked (about 250 MB), under the real home unless the environment says.
JSII_PACKAGE_CACHE = os.environ.get("JSII_RUNTIME_PACKAGE_CACHE_ROOT") or str(
    Path.home() / ".cache" / "aws" / "jsii" / "package-cache"
)


def cdk_cli_environment(home: Path) -> dict[str, str]:
    """The CDK CLI's environment on a machine without AWS credentials: no AWS_* variable, an empty home (no
    ~/.aws), no instance metadata; the venv's Python and Node first on PATH, as the guide installs them.

    jsii's package cache stays where it was, as warm as a user's after their first synth: it holds no AWS
    configuration, and unpacking the CDK into the empty home again cost each app run seconds of CPU."""
    home.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join([str(Path(sys.executable).parent), str(ROOT / "node_modules" / ".bin"), os.environ["PATH"]])
    kept = {name: value for name, value in os.environ.items() if not name.startswith(("AWS_", "CDK_"))}
    return kept | {
        "PATH": path,
        "HOME": str(home),
        "JSII_RUNTIME_PACKAGE_CACHE_ROOT": JSII_PACKAGE_CACHE,
        "AWS_EC2_METADATA_DISABLED": "true",
        "CDK_DISABLE_CLI_TELEMETRY": "true",
        "CDK_DISABLE_VERSION_CHECK": "true",
    }


#: Set by .ci/install-check: its folder, where a user's fresh venv synthesized the guide's app with `npx cdk synth`
#: and no AWS credentials (cdk.out, the CLI's output in synth.log) and ran it with `pipeline local` (result.json).
INSTALL_CHECK_FOLDER = "GUIDE_INSTALL_CHECK"


@dataclass(frozen=True)
class GuideApp:
    """What the user's path made of the guide's app: its cloud assembly, what `cdk synth` printed, and the
    result of its local run."""

    outdir: Path
    synth_output: str
    local_run: dict
    synthesized_by: str  # "cdk synth", or "python app.py" on a machine without Node


@pytest.fixture(scope="module")
def guide_app() -> GuideApp:
    """The guide's app as a user without an AWS account makes and runs it, once per CI run: .ci/install-check
    installs the package into a fresh venv as the guide says, runs `npx cdk synth` (which runs `python app.py`
    twice: the second time with the lookup it could not make) and `pipeline local`, then runs these tests on
    what they made. Doing all that again here would double the suite's longest chain of work for the same
    answer; `make test` skips them and says where they run."""
    folder = os.environ.get(INSTALL_CHECK_FOLDER)
    if not folder:
        pytest.skip("the guide's app, installed and run as a user does, is tested by `make install-check` (CI runs it)")
    folder_path = Path(folder)
    return GuideApp(
        outdir=folder_path / "cdk.out",
        synth_output=(folder_path / "synth.log").read_text(),
        local_run=json.loads((folder_path / "result.json").read_text()),
        synthesized_by=(folder_path / "synthesized-by").read_text().strip(),
    )


def test_the_guides_app_synthesizes_with_the_cdk_cli_and_no_aws_credentials(guide_app):
    """`npx cdk synth` as a user without an AWS account runs it (`python app.py` alone would hide the CLI's
    lookups: only the CLI makes them, and it needs credentials for a stack with an account); install-check
    stops at a failed synth, so the assembly being there says it passed."""
    if guide_app.synthesized_by != "cdk synth":
        pytest.skip(f"no Node on this machine: install-check synthesized by {guide_app.synthesized_by}")
    assert (guide_app.outdir / "manifest.json").is_file(), guide_app.synth_output[-3000:]
    assert "Need to perform AWS calls" not in guide_app.synth_output


def test_the_guides_app_synthesizes_across_two_stacks_with_no_unacknowledged_finding(guide_app):
    outdir = guide_app.outdir
    manifest = json.loads((outdir / "manifest.json").read_text())
    stacks = {
        name for name, artifact in manifest["artifacts"].items() if artifact["type"] == "aws:cloudformation:stack"
    }
    assert stacks == {"Shared", "Work"}
    report = json.loads((outdir / "validation-report.json").read_text())
    plugins = {plugin["pluginName"]: plugin for plugin in report["pluginReports"]}
    assert {"AwsSolutions", "Serverless", "cdk-validator-cfnguard"} <= set(plugins)
    assert all(plugin["violations"] == [] for plugin in plugins.values())
    # The acknowledgments of wildcard S3 grants kept matching though the bucket lives in the other stack.
    cross_stack = [
        v["acknowledgedId"]
        for v in plugins["AwsSolutions"].get("suppressedViolations", [])
        if "Shared:ExportsOutput" in v["acknowledgedId"]
    ]
    assert len(cross_stack) >= 5


def test_the_guides_app_runs_its_fleet_and_its_chain_locally_across_its_two_stacks(guide_app):
    """The fleet in Work reads and writes the bucket of Shared (Fn::ImportValue): the local run creates what
    the stack imports, under the same run, and checks every call against the roles of Work. `--demo` fires the
    daily schedule, which runs the chain: the registry steps' commands, the directory step's code, its success
    and its message link. (install-check's `pipeline local --stack Work --demo --tasks 3`, from the fresh venv.)"""
    result = guide_app.local_run
    assert result["ok"], result
    (fleet,) = result["fleets"].values()
    assert (fleet["done"], fleet["lost"], fleet["rows_succeeded"]) == (3, 0, 3)
    assert [schedule for schedule, fired in result["schedules"].items() if fired] == ["Work/Daily/Schedule/Resource"]
    steps = {job["step"]: job["status"] for job in result["jobs"]}
    assert steps == {"fetch": "SUCCEEDED", "summarize": "SUCCEEDED", "load": "SUCCEEDED"}, result["jobs"]
    assert len({job["run"] for job in result["jobs"]}) == 1, result["jobs"]  # the message carried the chain run
    written = {prefix: count for prefix, count in result["objects"].items() if prefix.startswith("shared-")}
    assert sorted(p.split("/", 1)[1] for p in written) == [
        "Nightly/summarize/",
        "resize/input/",
        "resize/output/",
    ], result["objects"]
    assert result["iam"]["denied"] == [] and result["iam"]["checked"] > 0


def test_the_guides_app_allows_no_service_without_its_source(guide_app):
    """The source-condition scan of tests/app/test_source_conditions.py, on the guide's app."""
    stacks = load_assembly(guide_app.outdir)
    assert {stack.name for stack in stacks} == {"Shared", "Work"}
    assert {stack.name: unbound_service_statements(stack.template) for stack in stacks} == {"Shared": [], "Work": []}


def test_the_guides_app_has_no_unacknowledged_rule_pack_finding(guide_app, tmp_path):
    """checkov and parliament as over the example (tests/app/test_rule_packs.py), on the guide's two stacks:
    nothing open, nothing acknowledged that no longer occurs. (That checkov honours the acknowledgments as
    written is checked on the example's, made by the same helpers.)"""
    templates = stacks_by_name(load_assembly(guide_app.outdir))
    scan = scan_rule_packs(templates, tmp_path, exports=["Shared"], as_synthesized=False)
    assert scan.unacknowledged() == {"Shared": [], "Work": []}
    assert scan.stale() == {"Shared": [], "Work": []}
