"""The example app as a whole: per-environment stacks, snapshots, cfn-lint, cdk-nag, cost-free defaults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import aws_cdk as cdk
import pytest
from aws_cdk import aws_s3 as s3
from cfnlint.api import ManualArgs, lint_file
from syrupy.extensions.json import JSONSnapshotExtension

import app as example_app
from tests.support import ROOT
from tests.support.example_app import cdk_json_context, mask_asset_hashes

#: The rule packs validated at synth: cdk-nag's two and the Control Tower proactive controls.
NAG_PACKS = {"AwsSolutions", "Serverless", "cdk-validator-cfnguard"}
ALWAYS_BILLED_TYPES = {
    "AWS::EC2::NatGateway",
    "AWS::KMS::Key",
    "AWS::EC2::TransitGateway",
    "AWS::ElasticLoadBalancingV2::LoadBalancer",
}


@pytest.fixture
def snapshot_json(snapshot):
    return snapshot.use_extension(JSONSnapshotExtension)


def test_one_stack_per_environment(example_stacks):
    assert sorted(example_stacks) == ["pipeline-dev", "pipeline-prod"]


@pytest.mark.parametrize("stack_name", ["pipeline-dev", "pipeline-prod"])
def test_stack_snapshot(example_stacks, stack_name, snapshot_json):
    assert mask_asset_hashes(example_stacks[stack_name].template) == snapshot_json


@pytest.mark.parametrize("stack_name", ["pipeline-dev", "pipeline-prod"])
def test_cfn_lint_reports_no_errors(example_stacks, stack_name):
    stack = example_stacks[stack_name]
    region = "us-east-1" if stack_name.endswith("dev") else "eu-central-1"
    matches = lint_file(stack.template_path, config=ManualArgs(regions=[region]))
    errors = [str(m) for m in matches if m.rule.severity == "error"]
    assert errors == []


def _validation_report(outdir) -> dict:
    return json.loads((outdir / "validation-report.json").read_text())


def test_nag_reports_nothing_unacknowledged(example_outdir):
    outdir = example_outdir
    report = _validation_report(outdir)
    violations = {p["pluginName"]: p["violations"] for p in report["pluginReports"]}
    assert all(not found for found in violations.values()), violations


def declared_acknowledgments(outdir: Path) -> set[tuple[str, str]]:
    """(construct path, rule id) of every rule-pack acknowledgment in the assembly's stacks, read from the
    construct metadata synth writes beside each template (no second synth for the construct tree)."""
    declared = set()
    for artifact in json.loads((outdir / "manifest.json").read_text())["artifacts"].values():
        metadata = dict(artifact.get("metadata", {}))
        if "additionalMetadataFile" in artifact:
            metadata |= json.loads((outdir / artifact["additionalMetadataFile"]).read_text())
        for path, entries in metadata.items():
            for entry in entries:
                if entry["type"] == cdk.Validations.ACKNOWLEDGED_RULES_METADATA_KEY:
                    ours = [rule for rule in entry["data"] if rule.split("::")[0] in NAG_PACKS]
                    declared |= {(path.lstrip("/"), rule) for rule in ours}
    return declared


def test_every_acknowledgment_suppresses_a_finding(example_outdir):
    """An acknowledgment that matches nothing is too broad or stale: each must earn its place."""
    used = {
        (suppressed["acknowledgedAt"], suppressed["acknowledgedId"])
        for plugin in _validation_report(example_outdir)["pluginReports"]
        for suppressed in plugin.get("suppressedViolations", [])
    }
    declared = declared_acknowledgments(example_outdir)
    assert declared, "expected at least one acknowledgment in the example app"
    assert declared - used == set()


def test_every_acknowledgment_has_a_reason(example_outdir):
    outdir = example_outdir
    for plugin in _validation_report(outdir)["pluginReports"]:
        for suppressed in plugin.get("suppressedViolations", []):
            assert len(suppressed.get("reason", "")) >= 40, suppressed["acknowledgedId"]


def test_unacknowledged_finding_fails_synth(tmp_path):
    """The rule packs are wired into synth: a bare bucket (no TLS policy, no logs, no versioning) fails it,
    by cdk-nag's rules and by the Control Tower controls."""
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "pipeline-dev")
    s3.CfnBucket(stack, "CarelessBucket")
    example_app.add_rule_packs(app)  # what build_app attaches (the example's own report shows all three)
    with pytest.raises(Exception, match="ValidationFailed") as error:
        app.synth()
    assert "pipeline-dev/CarelessBucket" in str(error.value)
    assert "AwsSolutions-S10" in str(error.value)
    assert "[CT.S3.PR.2]" in str(error.value)  # server access logging


def test_the_control_tower_controls_can_be_left_out_of_a_quick_iteration(tmp_path):
    app = cdk.App(outdir=str(tmp_path), context={example_app.CONTROL_TOWER_CONTEXT_KEY: "false"})
    s3.CfnBucket(cdk.Stack(app, "Quick"), "CarelessBucket")
    example_app.add_rule_packs(app)
    with pytest.raises(Exception, match="ValidationFailed") as error:
        app.synth()
    assert "AwsSolutions-S10" in str(error.value) and "[CT." not in str(error.value)


def test_nothing_billed_while_idle_by_default(example_stacks):
    """dev runs the default profile (prod the compliance profile: tests/test_compliance.py)."""
    stack = example_stacks["pipeline-dev"]
    assert set(stack.resource_counts()) & ALWAYS_BILLED_TYPES == set()
    endpoints = stack.resources_of_type("AWS::EC2::VPCEndpoint").values()
    assert [e["Properties"]["VpcEndpointType"] for e in endpoints] == ["Gateway", "Gateway"]


def test_environments_differ_in_real_knobs(example_stacks):
    dev, prod = example_stacks["pipeline-dev"].template, example_stacks["pipeline-prod"].template

    def retentions(template):
        return sorted(
            r["Properties"]["RetentionInDays"]
            for r in template["Resources"].values()
            if r["Type"] == "AWS::Logs::LogGroup"
        )

    assert retentions(dev) != retentions(prod)
    deletion = {r.get("DeletionPolicy") for r in dev["Resources"].values() if r["Type"] == "AWS::S3::Bucket"}
    assert deletion == {"Delete"}
    deletion = {r.get("DeletionPolicy") for r in prod["Resources"].values() if r["Type"] == "AWS::S3::Bucket"}
    assert deletion == {"Retain"}


def test_env_context_selects_one_environment(tmp_path):
    # The selection happens as the app is built; synthesizing prod again would only repeat its checks.
    context = cdk_json_context() | {"env": "prod"}
    app = example_app.build_app(context, outdir=str(tmp_path), rule_packs=False)
    assert [c.node.id for c in app.node.children if isinstance(c, cdk.Stack)] == ["pipeline-prod"]


def test_unknown_environment_is_a_one_line_error(tmp_path):
    context = json.dumps(cdk_json_context() | {"env": "staging"})
    result = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=os.environ
        | {
            # The venv's Node 24, as under make: the system Node 20 prints an end-of-life banner.
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "CDK_CONTEXT_JSON": context,
            "CDK_OUTDIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["error: unknown environment 'staging'; known: dev, prod"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"logRetentionDays": 10}, "logRetentionDays=10 is invalid"),
        ({"removalPolicy": "snapshot"}, "removalPolicy='snapshot'"),
        ({"fleetSize": 3}, "unknown key(s) fleetSize"),
        ({"compliance": "yes"}, "compliance='yes'; allowed: true, false"),
        ({"feedLink": "always"}, "feedLink='always'; allowed: message, success"),
    ],
)
@pytest.mark.user_mistake
def test_bad_environment_config_names_the_key(change, message):
    raw = cdk_json_context()[example_app.ENVIRONMENTS_CONTEXT_KEY]["dev"] | change
    with pytest.raises(example_app.ConfigError) as error:
        example_app.EnvironmentConfig.from_context("dev", raw)
    assert message in str(error.value)
