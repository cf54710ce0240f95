"""How a SpotWorkerFleet instance boots: the worker environment file, the code, the systemd unit (user data).

The worker code reaches an instance as S3 assets (Python bundle under systemd) or as a Docker image. Every
asset object is granted to the instance role by its exact key; no credentials are written to user data.
"""

from __future__ import annotations

import base64
import enum
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from aws_cdk import Aws, Fn, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3_assets as s3_assets

from pipeline_constructs.building_blocks.validation import argument_error, seconds
from pipeline_constructs.fleet.options import LOCK_FILE, WHEELS_DIR, check_worker_requirements
from pipeline_constructs.fleet.scaling import DRAIN_HOOK_NAME
from pipeline_constructs.fleet.worker.config import SPARE_DELIVERIES

if TYPE_CHECKING:
    from pipeline_constructs.fleet.construct import SpotWorkerFleet

#: Where the worker runtime lives; shipped to instances as the package ``pipeline_worker``.
WORKER_RUNTIME_DIR = Path(__file__).resolve().parent / "worker"
#: The environment file systemd (and docker --env-file) read: one ``NAME=value`` line per variable.
ENVIRONMENT_FILE = "/etc/pipeline-worker.env"
#: A name systemd's EnvironmentFile and docker's --env-file both take as it is.
VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Appends one variable to the environment file. Its value arrives base64-encoded (resolved at deploy by
#: Fn::Base64), so no value, a deploy-time token's included, can end the script's quoting; a value holding a
#: control character (a newline would add a line, a variable of its own, to the file) stops the boot instead.
WRITE_VARIABLE = f"""pipeline_env() {{
  local decoded kept
  decoded=$(printf '%s' "$2" | base64 --decode | LC_ALL=C wc -c)
  kept=$(printf '%s' "$2" | base64 --decode | LC_ALL=C tr -d '\\000-\\010\\012-\\037\\177' | LC_ALL=C wc -c)
  if [ "$decoded" -ne "$kept" ]; then
    echo "{ENVIRONMENT_FILE}: the value of $1 holds a control character; not booting" >&2
    return 1
  fi
  printf '%s=%s\\n' "$1" "$(printf '%s' "$2" | base64 --decode)" >> {ENVIRONMENT_FILE}
}}"""


class WorkerDelivery(enum.Enum):
    """How the worker code reaches an instance."""

    #: The worker directory and the runtime as S3 assets, run under systemd: no Docker needed to deploy.
    PYTHON_BUNDLE = "python-bundle"
    #: A Docker image built from the worker directory's Dockerfile, run by Docker on the instance.
    CONTAINER = "container"


def worker_environment(fleet: SpotWorkerFleet, environment: Mapping[str, str] | None) -> dict[str, str]:
    """``/etc/pipeline-worker.env``: what the worker runtime reads (``PIPELINE_*``), then the task's own
    ``environment``, whose names may not start with ``PIPELINE_``."""
    extra = dict(environment or {})
    reserved = sorted(name for name in extra if name.startswith("PIPELINE_"))
    if reserved:
        raise argument_error(fleet, "environment", reserved, "names not starting with PIPELINE_ (reserved)")
    unwritable = sorted(str(name) for name in extra if not isinstance(name, str) or not VARIABLE_NAME.fullmatch(name))
    if unwritable:
        raise argument_error(
            fleet, "environment", unwritable, "names of letters, digits and _, not starting with a digit"
        )
    one_line = [name for name, value in extra.items() if not Token.is_unresolved(value) and _control_characters(value)]
    if one_line:
        raise argument_error(fleet, "environment", sorted(one_line), "values without newlines or control characters")
    variables = {
        "AWS_REGION": Aws.REGION,
        "PIPELINE_QUEUE_URL": fleet.queue.queue_url,
        **fleet.task_variables,
        "PIPELINE_BUCKET": fleet.bucket.bucket_name,
        "PIPELINE_PREFIX": fleet.prefix,
        "PIPELINE_TABLE": fleet.table.table_name,
        "PIPELINE_FLEET_NAME": fleet.node.path,
        "PIPELINE_LOG_GROUP": fleet.log_group.log_group_name,
    }
    if fleet.downstream_queue is not None:
        variables["PIPELINE_DOWNSTREAM_QUEUE_URL"] = fleet.downstream_queue.queue_url
    if fleet.concurrency is not None:
        variables["PIPELINE_CONCURRENCY"] = str(fleet.concurrency)
    if fleet.created_queue:
        # Known at synth for a created queue: saves the worker a GetQueueAttributes call at start. (Not the
        # visibility timeout of a task timeout known only at deploy time: the worker reads it from the queue.)
        visibility_seconds = seconds(fleet.visibility_timeout)
        if visibility_seconds is not None:
            variables["PIPELINE_VISIBILITY_TIMEOUT"] = str(int(visibility_seconds))
        variables["PIPELINE_MAX_RECEIVE_COUNT"] = str(fleet.max_receive_count + SPARE_DELIVERIES)
        variables["PIPELINE_MAX_ATTEMPTS"] = str(fleet.max_receive_count)
    task_seconds = seconds(fleet.task_timeout)
    if task_seconds is not None:
        variables["PIPELINE_TASK_TIMEOUT"] = str(int(task_seconds))
    variables["PIPELINE_LIFECYCLE_HOOK"] = DRAIN_HOOK_NAME
    return variables | extra


def worker_user_data(fleet: SpotWorkerFleet, variables: dict[str, str]) -> ec2.UserData:
    """The boot script: ``/etc/pipeline-worker.env``, then the delivery's code and service.

    The script embeds the assets' hashes, so changed worker code is a new launch template version, which
    the fleet's instance refresh rolls out (draining each replaced worker through its lifecycle hook).
    """
    user_data = ec2.UserData.for_linux()
    user_data.add_commands(
        "set -euo pipefail",
        "install -d -m 0755 /opt/pipeline /var/log/pipeline-worker",
        WRITE_VARIABLE,
        f"install -m 0644 /dev/null {ENVIRONMENT_FILE}",
        *(environment_line(name, value) for name, value in variables.items()),
    )
    if fleet.delivery is WorkerDelivery.CONTAINER:
        _container_boot(fleet, user_data)
    else:
        _bundle_boot(fleet, user_data)
    return user_data


def environment_line(name: str, value: str) -> str:
    """``pipeline_env NAME '<value in base64>'``: a literal value encoded here, a token by Fn::Base64 at deploy."""
    encoded = Fn.base64(value) if Token.is_unresolved(value) else base64.b64encode(value.encode()).decode()
    return f"pipeline_env {name} '{encoded}'"


def _control_characters(value: str) -> bool:
    return any((ord(character) < 32 and character != "\t") or ord(character) == 127 for character in value)


def _download(fleet: SpotWorkerFleet, user_data: ec2.UserData, asset: s3_assets.Asset, local_file: str) -> None:
    # Our own line, not add_s3_download_command's: its unquoted `mkdir -p $(dirname ...)` fails shellcheck, and
    # the files go to /tmp, which exists.
    user_data.add_commands(f"aws s3 cp 's3://{asset.s3_bucket_name}/{asset.s3_object_key}' '{local_file}'")
    # Read access to this one object, not the whole asset bucket.
    fleet.role.add_to_principal_policy(
        iam.PolicyStatement(actions=["s3:GetObject"], resources=[asset.bucket.arn_for_objects(asset.s3_object_key)])
    )


def _runtime_asset(fleet: SpotWorkerFleet) -> s3_assets.Asset:
    return s3_assets.Asset(fleet, "RuntimeBundle", path=str(WORKER_RUNTIME_DIR), exclude=["__pycache__", "*.pyc"])


def _bundle_boot(fleet: SpotWorkerFleet, user_data: ec2.UserData) -> None:
    check_worker_requirements(fleet)
    task_asset = s3_assets.Asset(
        fleet, "TaskBundle", path=str(fleet.worker_directory), exclude=["__pycache__", "*.pyc", "tests"]
    )
    _download(fleet, user_data, task_asset, "/tmp/task.zip")
    _download(fleet, user_data, _runtime_asset(fleet), "/tmp/runtime.zip")
    agent_config = (
        '{"logs":{"logs_collected":{"files":{"collect_list":[{"file_path":'
        '"/var/log/pipeline-worker/worker.log","log_group_name":"'
        f"{fleet.log_group.log_group_name}"
        '","log_stream_name":"{instance_id}"}]}}}}'
    )
    user_data.add_commands(
        "dnf install -y python3.11 python3.11-pip unzip amazon-cloudwatch-agent",
        "id pipeline-worker || useradd --system --home-dir /opt/pipeline --shell /sbin/nologin pipeline-worker",
        "unzip -q -o /tmp/task.zip -d /opt/pipeline/task",
        "unzip -q -o /tmp/runtime.zip -d /opt/pipeline/lib/pipeline_worker",
        "python3.11 -m venv /opt/pipeline/venv",
        # Only the lock's packages, from the wheels shipped with the code, each checked against its hash: no
        # package index at boot (no NAT needed), nothing unpinned (checked at synth: check_worker_requirements).
        f"/opt/pipeline/venv/bin/pip install -q --no-index --find-links /opt/pipeline/task/{WHEELS_DIR} "
        f"--only-binary=:all: --require-hashes -r /opt/pipeline/task/{LOCK_FILE}",
        "chown -R pipeline-worker:pipeline-worker /var/log/pipeline-worker",
        f"cat > /opt/aws/amazon-cloudwatch-agent/etc/pipeline-worker.json <<'AGENT'\n{agent_config}\nAGENT",
        "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s "
        "-c file:/opt/aws/amazon-cloudwatch-agent/etc/pipeline-worker.json",
        "install -m 0644 /opt/pipeline/lib/pipeline_worker/pipeline-worker.service /etc/systemd/system/",
        "systemctl daemon-reload",
        "systemctl enable --now pipeline-worker.service",
    )


def _container_boot(fleet: SpotWorkerFleet, user_data: ec2.UserData) -> None:
    image = ecr_assets.DockerImageAsset(
        fleet,
        "Image",
        directory=str(fleet.worker_directory),
        build_contexts={"runtime": str(WORKER_RUNTIME_DIR)},
        platform=ecr_assets.Platform.LINUX_ARM64 if fleet.architecture == "arm64" else ecr_assets.Platform.LINUX_AMD64,
    )
    fleet.image = image
    image.repository.grant_pull(fleet.role)
    registry = f"{Aws.ACCOUNT_ID}.dkr.ecr.{Aws.REGION}.{Aws.URL_SUFFIX}"
    _download(fleet, user_data, _runtime_asset(fleet), "/tmp/runtime.zip")
    user_data.add_commands(
        "dnf install -y docker unzip",
        "systemctl enable --now docker",
        environment_line("PIPELINE_IMAGE", image.image_uri),
        f"aws ecr get-login-password --region {Aws.REGION} | docker login --username AWS --password-stdin {registry}",
        f"docker pull {image.image_uri}",
        "unzip -q -o /tmp/runtime.zip -d /opt/pipeline/runtime",
        "install -m 0644 /opt/pipeline/runtime/pipeline-worker-container.service "
        "/etc/systemd/system/pipeline-worker.service",
        "systemctl daemon-reload",
        "systemctl enable --now pipeline-worker.service",
    )
