"""SpotWorkerFleet instances as a reviewer reads them: listing confined to the fleet's prefix, a boot script no
value can break out of, requirements installed only from hash-checked wheels shipped with the code, launches
that instance tags cannot fail, and an image that changes only when asked."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import cast

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Annotations, Match, Template

from pipeline_constructs import SpotWorkerFleet
from pipeline_constructs.fleet.boot import ENVIRONMENT_FILE
from tests.support import ROOT
from tests.support.static_checks import shellcheck, user_data_scripts

SQS_WORKER = ROOT / "worker_images" / "sqs_worker"
ACCOUNT = "111111111111"
AMI_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-6.1-x86_64"


def _stack(**environment: str) -> cdk.Stack:
    return cdk.Stack(cdk.App(), "Test", env=cdk.Environment(region="us-east-1", **environment))


def _fleet(stack: cdk.Stack, **kwargs) -> SpotWorkerFleet:
    return SpotWorkerFleet(stack, "Fleet", **({"worker_directory": SQS_WORKER, "task": "task:csv_stats"} | kwargs))


# ---------------------------------------------------------------------------------------------- listing


def test_the_instance_role_lists_only_under_its_fleets_prefix(dev_template: Template):
    roles = {lid for lid in dev_template.find_resources("AWS::IAM::Role") if "InstanceRole" in lid}
    listings = [
        statement
        for policy in dev_template.find_resources("AWS::IAM::Policy").values()
        if {r["Ref"] for r in policy["Properties"]["Roles"]} & roles
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
        if statement["Action"] == "s3:ListBucket"
    ]
    assert listings
    for statement in listings:
        # A listing of the whole bucket (no prefix) fails the condition: s3:prefix is then absent.
        (prefix,) = statement["Condition"]["StringLike"]["s3:prefix"]
        assert re.fullmatch(r"[a-z0-9-]+/\*", prefix), prefix
        assert "StringEquals" not in statement["Condition"], "any delimiter: it only groups keys under the prefix"


# -------------------------------------------------------------------------------------------- user data

HOSTILE = [
    "'PIPELINE_ENV' $(touch {pwned}) `touch {pwned}` \"quoted\" ${{HOME}} \\ ; & |",
    "plain-value",
]
BREAKOUT = "x\nPIPELINE_ENV\ntouch {pwned}\nPIPELINE_ENV=y"


def _rendered_environment_part(template: dict, values: dict[str, str], environment_file: Path) -> str:
    """The boot script's environment-writing part as an instance runs it, each parameter's Fn::Base64 filled
    with its hostile value (as CloudFormation would), other references with a placeholder."""
    (launch_template,) = [r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::LaunchTemplate"]
    parts = launch_template["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Join"][1]

    def rendered(part) -> str:
        if isinstance(part, str):
            return part
        inner = part.get("Fn::Base64")
        if isinstance(inner, dict) and inner.get("Ref") in values:
            return base64.b64encode(values[inner["Ref"]].encode()).decode()
        return base64.b64encode(b"PLACEHOLDER").decode() if inner is not None else "PLACEHOLDER"

    script = "".join(rendered(part) for part in parts)
    lines = script.splitlines()
    last = max(i for i, line in enumerate(lines) if line.startswith("pipeline_env "))
    written = "\n".join(line for line in lines[: last + 1] if not line.startswith("install -d "))
    return written.replace(ENVIRONMENT_FILE, str(environment_file))


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, text=True, check=False, timeout=30)


def _hostile_template() -> dict:
    stack = _stack()
    first, second = (cdk.CfnParameter(stack, name).value_as_string for name in ("First", "Second"))
    _fleet(stack, environment={"FIRST": first, "SECOND": second, "LITERAL": "a 'quoted' $(value)"})
    return dict(Template.from_stack(stack).to_json())


def test_environment_values_from_deploy_time_tokens_stay_data(tmp_path: Path):
    template = _hostile_template()
    pwned = tmp_path / "pwned"
    hostile = {"First": HOSTILE[0].format(pwned=pwned), "Second": HOSTILE[1]}
    environment_file = tmp_path / "pipeline-worker.env"
    result = _run(_rendered_environment_part(template, hostile, environment_file), tmp_path)
    assert result.returncode == 0, result.stderr
    assert not pwned.exists(), "a value ran as a command"
    lines = environment_file.read_text().splitlines()
    assert f"FIRST={hostile['First']}" in lines and "SECOND=plain-value" in lines
    assert "LITERAL=a 'quoted' $(value)" in lines
    assert "PIPELINE_TASK=task:csv_stats" in lines and all("=" in line for line in lines)


def test_a_value_that_would_end_the_heredoc_or_add_a_line_stops_the_boot(tmp_path: Path):
    template = _hostile_template()
    pwned = tmp_path / "pwned"
    environment_file = tmp_path / "pipeline-worker.env"
    hostile = {"First": BREAKOUT.format(pwned=pwned), "Second": "ok"}
    result = _run(_rendered_environment_part(template, hostile, environment_file), tmp_path)
    assert result.returncode != 0 and "FIRST holds a control character" in result.stderr.replace("of FIRST", "FIRST")
    assert not pwned.exists()
    assert "touch" not in environment_file.read_text() and "PIPELINE_ENV=y" not in environment_file.read_text()


def test_the_boot_script_with_token_values_passes_shellcheck():
    (script,) = user_data_scripts(_hostile_template()).values()
    assert shellcheck(script) == ""


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"BAD": "a\nb"}, "Test/Fleet: environment=['BAD'] is invalid; allowed: values without newlines"),
        ({"BAD NAME": "x"}, "Test/Fleet: environment=['BAD NAME'] is invalid; allowed: names of letters, digits"),
    ],
)
@pytest.mark.user_mistake
def test_literal_environment_values_that_cannot_be_one_line_fail_synth(environment, message):
    with pytest.raises(ValueError) as error:
        _fleet(_stack(), environment=environment)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# ----------------------------------------------------------------------------------------- requirements


def test_boot_installs_only_the_locked_wheels_shipped_with_the_code(dev_template: Template):
    scripts = [s for s in user_data_scripts(dict(dev_template.to_json())).values() if "pipeline_env" in s]
    assert len(scripts) == 3  # every fleet of the example: a function's, a command's, an HTTP app's
    for script in scripts:
        user_data = script.replace("\n", " ")
        assert (
            "pip install -q --no-index --find-links /opt/pipeline/task/wheels --only-binary=:all: --require-hashes"
            in user_data
        )
        assert "-r /opt/pipeline/task/requirements.lock" in user_data
        assert "'boto3" not in user_data and "requirements.txt" not in user_data


def _worker_copy(tmp_path: Path) -> Path:
    worker = tmp_path / "worker"
    shutil.copytree(SQS_WORKER, worker, ignore=shutil.ignore_patterns("__pycache__"))
    return worker


@pytest.mark.user_mistake
def test_a_worker_directory_without_a_lock_fails_synth_saying_how_to_make_one(tmp_path: Path):
    worker = _worker_copy(tmp_path)
    (worker / "requirements.lock").unlink()
    with pytest.raises(ValueError) as error:
        _fleet(_stack(), worker_directory=worker)
    message = str(error.value)
    assert message.startswith(f"Test/Fleet: worker_directory='{worker}' is invalid; allowed: a directory with ")
    assert "--generate-hashes" in message and "pip download --require-hashes" in message and "\n" not in message


@pytest.mark.parametrize(
    ("change", "allowed"),
    [
        (lambda lock: lock.replace("six==1.17.0", "six>=1.16"), "pinned requirements (name==version)"),
        (lambda lock: re.sub(r"(boto3==\S+ \\\n\s+--hash=sha256:)\w+", r"\g<1>" + "0" * 64, lock), "a wheel of boto3"),
        (lambda lock: re.sub(r"boto3==\S+ \\\n\s+--hash=sha256:\w+\n", "", lock), "a lock holding boto3"),
    ],
)
@pytest.mark.user_mistake
def test_a_lock_that_is_not_pinned_hashed_and_shipped_fails_synth(tmp_path: Path, change, allowed):
    worker = _worker_copy(tmp_path)
    lock = worker / "requirements.lock"
    lock.write_text(change(lock.read_text()))
    with pytest.raises(ValueError, match=re.escape(f"is invalid; allowed: {allowed}")):
        _fleet(_stack(), worker_directory=worker)


@pytest.mark.user_mistake
def test_a_wheel_built_for_the_other_architecture_fails_synth(tmp_path: Path):
    worker = _worker_copy(tmp_path)
    wheel = next((worker / "wheels").glob("six-*.whl"))
    wheel.rename(wheel.with_name("six-1.17.0-cp311-cp311-manylinux_2_28_x86_64.whl"))
    _fleet(_stack(), worker_directory=worker)  # x86_64 instances: fits
    with pytest.raises(ValueError, match=re.escape("allowed: a wheel of six for CPython 3.11 on aarch64 Linux")):
        SpotWorkerFleet(_stack(), "Arm", worker_directory=worker, task="task:csv_stats", architecture="arm64")


# ----------------------------------------------------------------------------------------- launches


@pytest.mark.parametrize("key", ["cost center", "team/name", "_index"])
@pytest.mark.user_mistake
def test_an_instance_tag_key_metadata_cannot_serve_fails_synth_not_every_launch(key):
    stack = _stack()
    _fleet(stack)
    cdk.Tags.of(stack).add(key, "x")
    with pytest.raises(Exception, match=re.escape(f"Test/Fleet: instance tag keys ['{key}'] are invalid")):
        cast(cdk.App, stack.node.root).synth()


def test_tags_kept_off_the_instances_and_valid_keys_pass():
    stack = _stack()
    fleet = _fleet(stack)
    cdk.Tags.of(stack).add("cost-center", "x")
    cdk.Tags.of(fleet.auto_scaling_group).add(
        "team name", "x", apply_to_launched_instances=False, exclude_resource_types=["AWS::EC2::LaunchTemplate"]
    )
    cast(cdk.App, stack.node.root).synth()


# ----------------------------------------------------------------------------------------- image


def test_the_image_is_looked_up_once_and_kept_in_context_when_the_stack_has_an_environment():
    app = cdk.App()
    stack = cdk.Stack(app, "Test", env=cdk.Environment(account=ACCOUNT, region="us-east-1"))
    _fleet(stack)
    manifest = json.loads((Path(app.synth().directory) / "manifest.json").read_text())
    (missing,) = [m for m in manifest["missing"] if m["props"].get("parameterName") == AMI_PARAMETER]
    # With the looked-up id in context (cdk.context.json), the template names that image, not a parameter
    # resolved at each deploy: an image release changes nothing until the entry is reset.
    app = cdk.App(context={missing["key"]: "ami-0123456789abcdef0"})
    stack = cdk.Stack(app, "Test", env=cdk.Environment(account=ACCOUNT, region="us-east-1"))
    _fleet(stack)
    template = Template.from_stack(stack)
    template.has_resource_properties(
        "AWS::EC2::LaunchTemplate", {"LaunchTemplateData": Match.object_like({"ImageId": "ami-0123456789abcdef0"})}
    )
    assert "ami-amazon-linux-latest" not in json.dumps(template.to_json().get("Parameters", {}))
    # Asked with a default: a synth without credentials (the CLI answers the default) resolves at deploy.
    assert missing["props"]["ignoreErrorOnMissingContext"] is True
    unlooked = cdk.App(context={missing["key"]: "unlooked-up"})
    stack = cdk.Stack(unlooked, "Test", env=cdk.Environment(account=ACCOUNT, region="us-east-1"))
    _fleet(stack)
    assert "ami-amazon-linux-latest" in json.dumps(Template.from_stack(stack).to_json().get("Parameters", {}))
    Annotations.from_stack(stack).has_info(
        "/Test/Fleet", Match.string_like_regexp("resolved at every deploy .the lookup needs AWS credentials")
    )


def test_an_image_of_the_users_choice_and_a_note_where_no_lookup_can_be_made():
    from aws_cdk import aws_ec2 as ec2

    stack = _stack()
    _fleet(stack, machine_image=ec2.MachineImage.generic_linux({"us-east-1": "ami-0fedcba9876543210"}))
    Template.from_stack(stack).has_resource_properties(
        "AWS::EC2::LaunchTemplate", {"LaunchTemplateData": Match.object_like({"ImageId": "ami-0fedcba9876543210"})}
    )
    agnostic = _stack()
    _fleet(agnostic)
    Annotations.from_stack(agnostic).has_info(
        "/Test/Fleet", Match.string_like_regexp("resolved at every deploy .no lookup without an account and region")
    )
