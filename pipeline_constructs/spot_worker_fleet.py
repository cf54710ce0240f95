"""SpotWorkerFleet: EC2 spot workers that pull tasks from SQS, read and write S3, and lose nothing."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from pathlib import Path

from aws_cdk import Aws, Duration, Stack, Token
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cloudwatch_actions
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_s3_assets as s3_assets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from pipeline_constructs._nag import acknowledge, acknowledge_wildcard_resources
from pipeline_constructs._validation import (
    argument_error,
    check_duration,
    check_not_empty,
    check_range,
    check_visibility_covers,
    seconds,
)
from pipeline_constructs.data_bucket import DataBucket
from pipeline_constructs.logs import DEFAULT_RETENTION, pipeline_log_group
from pipeline_constructs.manifest import PipelineManifest
from pipeline_constructs.network import PipelineNetwork
from pipeline_constructs.status_store import StatusStore
from pipeline_constructs.task_queue import TaskQueue

#: Where the worker runtime lives; shipped to instances as the package ``pipeline_worker``.
WORKER_RUNTIME_DIR = Path(__file__).resolve().parent / "worker"

#: Several current-generation families of one size, so spot capacity is found in more pools.
DEFAULT_X86_INSTANCE_TYPES = ("m7i.large", "m6i.large", "m6a.large", "m5.large", "c7i.large", "c6i.large", "c6a.large")
DEFAULT_ARM_INSTANCE_TYPES = ("m7g.large", "m6g.large", "c7g.large", "c6g.large", "r7g.large")


class WorkerDelivery(enum.Enum):
    """How the worker code reaches an instance."""

    #: The worker directory and the runtime as S3 assets, run under systemd: no Docker needed to deploy.
    PYTHON_BUNDLE = "python-bundle"
    #: A Docker image built from the worker directory's Dockerfile, run by Docker on the instance.
    CONTAINER = "container"


class SpotWorkerFleet(Construct):
    """An Auto Scaling group of EC2 spot workers consuming a task queue, scaled on the backlog, down to zero.

    :param worker_directory: directory with the task code (e.g. ``worker_images/sqs_worker``), its
        ``requirements.txt`` and, for container delivery, its ``Dockerfile``.
    :param task: the task function, ``module:function`` inside ``worker_directory``.
    :param network: where instances run. Default: a new :class:`PipelineNetwork` (public subnets, no NAT).
    :param queue: task queue to consume. Default: a new :class:`TaskQueue` with a DLQ.
    :param dead_letter_queue: the passed ``queue``'s DLQ, for alarms and the CLI. Default: the created one, or None.
    :param bucket: data bucket. Default: a new :class:`DataBucket`.
    :param table: status store table. Default: a new :class:`StatusStore`.
    :param prefix: this fleet's key prefix in the bucket; it reads ``<prefix>input/`` and writes
        ``<prefix>output/`` and ``<prefix>intermediate/``. Default: the construct id in lower case plus ``/``.
    :param downstream_queue: where finished tasks are forwarded (the next stage). Default: None.
    :param delivery: how the code reaches instances. Default: ``WorkerDelivery.PYTHON_BUNDLE``.
    :param instance_types: instance types to draw spot capacity from. Default: seven x86 (or five Graviton,
        with ``architecture="arm64"``) ``large`` types. At least one.
    :param architecture: ``x86_64`` or ``arm64``; chooses the Amazon Linux 2023 image. Default: ``x86_64``.
    :param min_size: instances kept running when idle. Default: 0. Range: 0 to ``max_size``.
    :param max_size: most instances. Default: 10. Range: 1 to 1000.
    :param on_demand_base_capacity: instances that are always on-demand. Default: 0 (all spot).
    :param on_demand_percentage_above_base: on-demand share above the base, in percent. Default: 0.
    :param tasks_per_worker: the backlog each instance should face (target tracking target). Default: 10.
    :param concurrency: tasks one worker runs at once. Default: the instance's vCPU count.
    :param task_timeout: the longest one task may take. Default: 15 minutes. Range: 1 s to 12 hours.
    :param visibility_timeout: the created queue's visibility timeout. Default: ``task_timeout`` plus 1 minute.
        At least ``task_timeout``; the worker's heartbeat extends it for tasks that run longer anyway.
    :param max_receive_count: deliveries before a task goes to the DLQ (created queue). Default: 3.
    :param environment: extra environment variables for the task code. Default: none.
    :param root_volume_size: root EBS volume in GiB (encrypted gp3). Default: 20. Range: 8 to 16384.
    :param log_retention: retention of the workers' log group. Default: one month.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        worker_directory: str | Path,
        task: str,
        network: PipelineNetwork | None = None,
        queue: sqs.IQueue | None = None,
        dead_letter_queue: sqs.IQueue | None = None,
        bucket: s3.IBucket | None = None,
        table: dynamodb.ITable | None = None,
        prefix: str | None = None,
        downstream_queue: sqs.IQueue | None = None,
        delivery: WorkerDelivery = WorkerDelivery.PYTHON_BUNDLE,
        instance_types: Sequence[str] | None = None,
        architecture: str = "x86_64",
        min_size: int = 0,
        max_size: int = 10,
        on_demand_base_capacity: int = 0,
        on_demand_percentage_above_base: int = 0,
        tasks_per_worker: int = 10,
        concurrency: int | None = None,
        task_timeout: Duration | None = None,
        visibility_timeout: Duration | None = None,
        max_receive_count: int = 3,
        environment: Mapping[str, str] | None = None,
        root_volume_size: int = 20,
        log_retention: logs.RetentionDays = DEFAULT_RETENTION,
    ) -> None:
        super().__init__(scope, construct_id)
        self.worker_directory = Path(worker_directory).resolve()
        self.task = task
        self.delivery = delivery
        self.architecture = architecture
        self.task_timeout = task_timeout or Duration.minutes(15)
        task_seconds = seconds(self.task_timeout)
        visibility_given = visibility_timeout is not None
        if visibility_timeout is None and task_seconds is not None:
            visibility_timeout = Duration.seconds(task_seconds + 60)
        self.instance_types = list(instance_types) if instance_types is not None else None
        self._validate(
            min_size=min_size,
            max_size=max_size,
            on_demand_base_capacity=on_demand_base_capacity,
            on_demand_percentage_above_base=on_demand_percentage_above_base,
            tasks_per_worker=tasks_per_worker,
            concurrency=concurrency,
            visibility_timeout=visibility_timeout,
            root_volume_size=root_volume_size,
            queue=queue,
            dead_letter_queue=dead_letter_queue,
            visibility_given=visibility_given,
        )
        if self.instance_types is None:
            arm = architecture == "arm64"
            self.instance_types = list(DEFAULT_ARM_INSTANCE_TYPES if arm else DEFAULT_X86_INSTANCE_TYPES)
        self.prefix = prefix if prefix is not None else f"{construct_id.lower()}/"
        if self.prefix and not self.prefix.endswith("/"):
            self.prefix += "/"

        self.network = network or PipelineNetwork(self, "Network")
        if queue is None:
            task_queue = TaskQueue(
                self,
                "Tasks",
                visibility_timeout=visibility_timeout,
                consumer_timeout=self.task_timeout,
                max_receive_count=max_receive_count,
            )
            queue, dead_letter_queue = task_queue.queue, task_queue.dead_letter_queue
        self.queue: sqs.IQueue = queue
        self.dead_letter_queue: sqs.IQueue | None = dead_letter_queue
        self.max_receive_count = max_receive_count
        self.max_size = max_size
        self.visibility_timeout = visibility_timeout
        self.bucket: s3.IBucket = bucket or DataBucket(self, "Data").bucket
        self.table: dynamodb.ITable = table or StatusStore(self, "Status").table
        self.downstream_queue = downstream_queue
        self.log_group = pipeline_log_group(self, "Logs", retention=log_retention)

        self.role = iam.Role(
            self,
            "InstanceRole",
            assumed_by=iam.ServicePrincipal("ec2.amazonaws.com"),
            description=f"SpotWorkerFleet {self.node.path}: consume its queue, its S3 prefix, status writes",
        )
        self.security_group = self.network.security_group(
            self, "SecurityGroup", description=f"{self.node.path} workers: no inbound traffic"
        )
        environment_variables = self._worker_environment(dict(environment or {}), concurrency)
        user_data = self._user_data(environment_variables)
        self.launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            machine_image=ec2.MachineImage.latest_amazon_linux2023(
                cpu_type=ec2.AmazonLinuxCpuType.ARM_64 if architecture == "arm64" else ec2.AmazonLinuxCpuType.X86_64
            ),
            role=self.role,
            security_group=self.security_group,
            user_data=user_data,
            require_imdsv2=True,
            # Two hops, so a worker in a container (bridge network) still reaches the metadata service.
            http_put_response_hop_limit=2,
            # The worker reads its Auto Scaling group's name from its tags for scale-in protection.
            instance_metadata_tags=True,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(
                        root_volume_size, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3
                    ),
                )
            ],
        )
        self.auto_scaling_group = autoscaling.AutoScalingGroup(
            self,
            "Group",
            vpc=self.network.vpc,
            vpc_subnets=self.network.subnet_selection,
            min_capacity=min_size,
            max_capacity=max_size,
            mixed_instances_policy=autoscaling.MixedInstancesPolicy(
                launch_template=self.launch_template,
                launch_template_overrides=[
                    autoscaling.LaunchTemplateOverrides(instance_type=ec2.InstanceType(name))
                    for name in self.instance_types
                ],
                instances_distribution=autoscaling.InstancesDistribution(
                    on_demand_base_capacity=on_demand_base_capacity,
                    on_demand_percentage_above_base_capacity=on_demand_percentage_above_base,
                    spot_allocation_strategy=autoscaling.SpotAllocationStrategy.PRICE_CAPACITY_OPTIMIZED,
                ),
            ),
            capacity_rebalance=True,
            group_metrics=[autoscaling.GroupMetrics(autoscaling.GroupMetric.IN_SERVICE_INSTANCES)],
            default_instance_warmup=Duration.minutes(3),
        )
        self._grant_worker_permissions()
        self._add_scaling(tasks_per_worker)
        self._acknowledge_findings()
        PipelineManifest.of(self).register(
            "fleets",
            self.node.path,
            {
                "queueUrl": self.queue.queue_url,
                "deadLetterQueueUrl": self.dead_letter_queue.queue_url if self.dead_letter_queue else None,
                "downstreamQueueUrl": self.downstream_queue.queue_url if self.downstream_queue else None,
                "bucket": self.bucket.bucket_name,
                "prefix": self.prefix,
                "table": self.table.table_name,
                "group": self.auto_scaling_group.auto_scaling_group_name,
            },
        )

    # ------------------------------------------------------------------ validation

    def _validate(
        self,
        *,
        min_size: int,
        max_size: int,
        on_demand_base_capacity: int,
        on_demand_percentage_above_base: int,
        tasks_per_worker: int,
        concurrency: int | None,
        visibility_timeout: Duration | None,
        root_volume_size: int,
        queue: sqs.IQueue | None,
        dead_letter_queue: sqs.IQueue | None,
        visibility_given: bool,
    ) -> None:
        if self.architecture not in ("x86_64", "arm64"):
            raise argument_error(self, "architecture", self.architecture, "x86_64, arm64")
        check_not_empty(self, "instance_types", self.instance_types)
        check_range(self, "max_size", max_size, minimum=1, maximum=1000)
        check_range(self, "min_size", min_size, minimum=0)
        if not Token.is_unresolved(min_size) and not Token.is_unresolved(max_size) and max_size < min_size:
            raise argument_error(self, "max_size", max_size, f"at least min_size ({min_size}) up to 1000")
        check_range(self, "on_demand_base_capacity", on_demand_base_capacity, minimum=0, maximum=max_size)
        check_range(self, "on_demand_percentage_above_base", on_demand_percentage_above_base, minimum=0, maximum=100)
        check_range(self, "tasks_per_worker", tasks_per_worker, minimum=1, maximum=100000)
        check_range(self, "concurrency", concurrency, minimum=1, maximum=1024)
        check_range(self, "root_volume_size", root_volume_size, minimum=8, maximum=16384, unit=" GiB")
        check_duration(self, "task_timeout", self.task_timeout, minimum=Duration.seconds(1), maximum=Duration.hours(12))
        check_visibility_covers(self, visibility_timeout, "task_timeout", self.task_timeout)
        if dead_letter_queue is not None and queue is None:
            raise argument_error(self, "dead_letter_queue", dead_letter_queue.node.path, "only together with queue")
        if queue is not None and visibility_given:
            raise argument_error(
                self,
                "visibility_timeout",
                f"{seconds(visibility_timeout):g} seconds",
                "only with a created queue (queue=None)",
            )

    # ------------------------------------------------------------------ instance boot

    def _worker_environment(self, extra: dict[str, str], concurrency: int | None) -> dict[str, str]:
        reserved = sorted(name for name in extra if name.startswith("PIPELINE_"))
        if reserved:
            raise argument_error(self, "environment", reserved, "names not starting with PIPELINE_ (reserved)")
        variables = {
            "AWS_REGION": Aws.REGION,
            "PIPELINE_QUEUE_URL": self.queue.queue_url,
            "PIPELINE_TASK": self.task,
            "PIPELINE_BUCKET": self.bucket.bucket_name,
            "PIPELINE_PREFIX": self.prefix,
            "PIPELINE_TABLE": self.table.table_name,
            "PIPELINE_FLEET_NAME": self.node.path,
            "PIPELINE_LOG_GROUP": self.log_group.log_group_name,
        }
        if self.downstream_queue is not None:
            variables["PIPELINE_DOWNSTREAM_QUEUE_URL"] = self.downstream_queue.queue_url
        if concurrency is not None:
            variables["PIPELINE_CONCURRENCY"] = str(concurrency)
        if self.visibility_timeout is not None and self.dead_letter_queue is not None:
            # Known at synth for a created queue: saves the worker a GetQueueAttributes call at start.
            variables["PIPELINE_VISIBILITY_TIMEOUT"] = str(int(seconds(self.visibility_timeout)))
            variables["PIPELINE_MAX_RECEIVE_COUNT"] = str(self.max_receive_count)
        return variables | extra

    def _user_data(self, variables: dict[str, str]) -> ec2.UserData:
        user_data = ec2.UserData.for_linux()
        env_lines = "\n".join(f"{name}={value}" for name, value in variables.items())
        user_data.add_commands(
            "set -euo pipefail",
            "install -d -m 0755 /opt/pipeline /var/log/pipeline-worker",
            f"cat > /etc/pipeline-worker.env <<'PIPELINE_ENV'\n{env_lines}\nPIPELINE_ENV",
            "chmod 0644 /etc/pipeline-worker.env",
        )
        if self.delivery is WorkerDelivery.CONTAINER:
            self._container_boot(user_data)
        else:
            self._bundle_boot(user_data)
        return user_data

    def _download(self, user_data: ec2.UserData, asset: s3_assets.Asset, local_file: str) -> None:
        user_data.add_s3_download_command(bucket=asset.bucket, bucket_key=asset.s3_object_key, local_file=local_file)
        # Read access to this one object, not the whole asset bucket.
        self.role.add_to_principal_policy(
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[asset.bucket.arn_for_objects(asset.s3_object_key)])
        )

    def _bundle_boot(self, user_data: ec2.UserData) -> None:
        task_asset = s3_assets.Asset(
            self, "TaskBundle", path=str(self.worker_directory), exclude=["__pycache__", "*.pyc", "tests"]
        )
        runtime_asset = s3_assets.Asset(
            self, "RuntimeBundle", path=str(WORKER_RUNTIME_DIR), exclude=["__pycache__", "*.pyc"]
        )
        self._download(user_data, task_asset, "/tmp/task.zip")
        self._download(user_data, runtime_asset, "/tmp/runtime.zip")
        agent_config = (
            '{"logs":{"logs_collected":{"files":{"collect_list":[{"file_path":'
            '"/var/log/pipeline-worker/worker.log","log_group_name":"'
            f"{self.log_group.log_group_name}"
            '","log_stream_name":"{instance_id}"}]}}}}'
        )
        user_data.add_commands(
            "dnf install -y python3.11 python3.11-pip unzip amazon-cloudwatch-agent",
            "id pipeline-worker || useradd --system --home-dir /opt/pipeline --shell /sbin/nologin pipeline-worker",
            "unzip -q -o /tmp/task.zip -d /opt/pipeline/task",
            "unzip -q -o /tmp/runtime.zip -d /opt/pipeline/lib/pipeline_worker",
            "python3.11 -m venv /opt/pipeline/venv",
            "/opt/pipeline/venv/bin/pip install -q 'boto3>=1.40,<2' -r /opt/pipeline/task/requirements.txt",
            "chown -R pipeline-worker:pipeline-worker /var/log/pipeline-worker",
            f"cat > /opt/aws/amazon-cloudwatch-agent/etc/pipeline-worker.json <<'AGENT'\n{agent_config}\nAGENT",
            "/opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s "
            "-c file:/opt/aws/amazon-cloudwatch-agent/etc/pipeline-worker.json",
            "install -m 0644 /opt/pipeline/lib/pipeline_worker/pipeline-worker.service /etc/systemd/system/",
            "systemctl daemon-reload",
            "systemctl enable --now pipeline-worker.service",
        )

    def _container_boot(self, user_data: ec2.UserData) -> None:
        image = ecr_assets.DockerImageAsset(
            self,
            "Image",
            directory=str(self.worker_directory),
            build_contexts={"runtime": str(WORKER_RUNTIME_DIR)},
            platform=ecr_assets.Platform.LINUX_ARM64
            if self.architecture == "arm64"
            else ecr_assets.Platform.LINUX_AMD64,
        )
        self.image = image
        image.repository.grant_pull(self.role)
        registry = f"{Aws.ACCOUNT_ID}.dkr.ecr.{Aws.REGION}.{Aws.URL_SUFFIX}"
        runtime_asset = s3_assets.Asset(
            self, "RuntimeBundle", path=str(WORKER_RUNTIME_DIR), exclude=["__pycache__", "*.pyc"]
        )
        self._download(user_data, runtime_asset, "/tmp/runtime.zip")
        user_data.add_commands(
            "dnf install -y docker unzip",
            "systemctl enable --now docker",
            f"echo PIPELINE_IMAGE={image.image_uri} >> /etc/pipeline-worker.env",
            f"aws ecr get-login-password --region {Aws.REGION}"
            f" | docker login --username AWS --password-stdin {registry}",
            f"docker pull {image.image_uri}",
            "unzip -q -o /tmp/runtime.zip -d /opt/pipeline/runtime",
            "install -m 0644 /opt/pipeline/runtime/pipeline-worker-container.service "
            "/etc/systemd/system/pipeline-worker.service",
            "systemctl daemon-reload",
            "systemctl enable --now pipeline-worker.service",
        )

    # ------------------------------------------------------------------ permissions

    def _grant_worker_permissions(self) -> None:
        role, bucket, prefix = self.role, self.bucket, self.prefix
        input_objects = bucket.arn_for_objects(f"{prefix}input/*")
        written_objects = [
            bucket.arn_for_objects(f"{prefix}output/*"),
            bucket.arn_for_objects(f"{prefix}intermediate/*"),
        ]
        self.queue.grant_consume_messages(role)
        if self.downstream_queue is not None:
            self.downstream_queue.grant_send_messages(role)
        statements = [
            iam.PolicyStatement(actions=["s3:GetObject"], resources=[input_objects]),
            # Get as well as Put: the worker checks a task's completion marker before redoing it.
            iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=written_objects),
            # Without ListBucket a missing completion marker answers 403 instead of 404.
            iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn]),
            iam.PolicyStatement(
                actions=["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem"],
                resources=[self.table.table_arn],
            ),
        ]
        for statement in statements:
            role.add_to_principal_policy(statement)
        acknowledge_wildcard_resources(
            role,
            [input_objects, *written_objects],
            "Object access is scoped to this fleet's own prefixes (input/, output/, intermediate/ under "
            f"'{prefix}'); task keys are only known at run time, so a key wildcard is the narrowest grant.",
        )
        # A policy of its own: the launch template depends on the role's default policy, so a statement
        # naming the group there would make group -> template -> policy -> group a cycle.
        group_arn = Stack.of(self).format_arn(
            service="autoscaling",
            resource="autoScalingGroup",
            resource_name=f"*:autoScalingGroupName/{self.auto_scaling_group.auto_scaling_group_name}",
        )
        self.scale_in_protection_policy = iam.Policy(
            self,
            "ScaleInProtectionPolicy",
            roles=[role],
            statements=[iam.PolicyStatement(actions=["autoscaling:SetInstanceProtection"], resources=[group_arn])],
        )
        acknowledge_wildcard_resources(
            self.scale_in_protection_policy,
            [group_arn],
            "The group's ARN holds a UUID that CloudFormation does not return; the ARN is pinned to this "
            "group by name, the wildcard stands only for that UUID.",
        )
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant_encrypt_decrypt(role)
        if self.table.encryption_key is not None:
            self.table.encryption_key.grant_encrypt_decrypt(role)
        self.log_group.grant_write(role)

    def grant_submit(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let a producer enqueue tasks and upload their inputs under ``<prefix>input/``."""
        grant = self.queue.grant_send_messages(grantee)
        self.bucket.grant_put(grantee, f"{self.prefix}input/*")
        return grant

    def grant_read_outputs(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let a consumer (the next stage, an analyst's role) read this fleet's ``<prefix>output/``."""
        outputs = self.bucket.arn_for_objects(f"{self.prefix}output/*")
        grant = iam.Grant.add_to_principal(grantee=grantee, actions=["s3:GetObject"], resource_arns=[outputs])
        if isinstance(grantee.grant_principal, Construct):
            acknowledge_wildcard_resources(
                grantee.grant_principal,
                [outputs],
                f"Read access to {self.node.path}'s outputs only (its '{self.prefix}output/' prefix); "
                "their keys are task ids known at run time.",
            )
        return grant

    # ------------------------------------------------------------------ scaling

    def _add_scaling(self, tasks_per_worker: int) -> None:
        group_name = self.auto_scaling_group.auto_scaling_group_name
        visible = self.queue.metric_approximate_number_of_messages_visible(
            period=Duration.minutes(1), statistic="Maximum"
        )
        in_service = cloudwatch.Metric(
            namespace="AWS/AutoScaling",
            metric_name="GroupInServiceInstances",
            dimensions_map={"AutoScalingGroupName": group_name},
            period=Duration.minutes(1),
            statistic="Average",
        )
        # Target tracking on backlog per instance (visible messages / in-service instances).
        autoscaling.CfnScalingPolicy(
            self,
            "BacklogPerInstance",
            auto_scaling_group_name=group_name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration=autoscaling.CfnScalingPolicy.TargetTrackingConfigurationProperty(
                target_value=tasks_per_worker,
                customized_metric_specification=autoscaling.CfnScalingPolicy.CustomizedMetricSpecificationProperty(
                    metrics=[
                        _metric_query("visible", visible, "Maximum"),
                        _metric_query("inservice", in_service, "Average"),
                        autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
                            id="backlog",
                            expression="visible / IF(inservice > 0, inservice, 1)",
                            label="Backlog per in-service instance",
                            return_data=True,
                        ),
                    ]
                ),
            ),
        )
        # One step policy, one alarm (alarms bill per metric): the expression is 2 when tasks wait and no
        # worker is in service (target tracking has no ratio then), 1 when nothing waits, else 0.
        #   2 -> +1 instance: leave zero (a change, so it never cuts a scale-out still launching);
        #   1 -> -max_size: back to zero; busy workers are protected from scale-in until their task is done.
        zero_steps = autoscaling.StepScalingAction(
            self,
            "ZeroSteps",
            auto_scaling_group=self.auto_scaling_group,
            adjustment_type=autoscaling.AdjustmentType.CHANGE_IN_CAPACITY,
        )
        zero_steps.add_adjustment(adjustment=-self.max_size, lower_bound=0, upper_bound=1)
        zero_steps.add_adjustment(adjustment=1, lower_bound=1)
        self.zero_alarm = cloudwatch.Alarm(
            self,
            "LeaveOrReturnToZero",
            metric=cloudwatch.MathExpression(
                expression="IF(visible > 0, IF(FILL(inservice, 0) == 0, 2, 0), 1)",
                using_metrics={"visible": visible, "inservice": in_service},
                period=Duration.minutes(1),
                label="2: tasks wait with no worker, 1: nothing waits",
            ),
            threshold=0.5,
            evaluation_periods=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            # An idle queue may publish no datapoint: that means nothing waits.
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            alarm_description="Leave zero when tasks wait with no worker in service; return to zero when none wait.",
        )
        self.zero_alarm.add_alarm_action(cloudwatch_actions.AutoScalingAction(zero_steps))

    # ------------------------------------------------------------------ cdk-nag

    def _acknowledge_findings(self) -> None:
        acknowledge(
            self.auto_scaling_group,
            "AwsSolutions-EC26",
            "cdk-nag's EC26 cannot read an ASG with a mixed instances policy (it throws); the launch "
            "template's only volume is encrypted gp3, which this library's tests assert.",
        )
        acknowledge(
            self.auto_scaling_group,
            "AwsSolutions-AS3",
            "Scaling activity is visible in the Auto Scaling activity history and the worker status rows; "
            "e-mail per spot launch and reclaim would be noise for a fleet that scales to zero daily.",
        )


def _metric_query(
    query_id: str, metric: cloudwatch.Metric, statistic: str
) -> autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty:
    config = metric.to_metric_config().metric_stat
    return autoscaling.CfnScalingPolicy.TargetTrackingMetricDataQueryProperty(
        id=query_id,
        return_data=False,
        metric_stat=autoscaling.CfnScalingPolicy.TargetTrackingMetricStatProperty(
            metric=autoscaling.CfnScalingPolicy.MetricProperty(
                namespace=config.namespace,
                metric_name=config.metric_name,
                dimensions=[
                    autoscaling.CfnScalingPolicy.MetricDimensionProperty(name=d.name, value=d.value)
                    for d in config.dimensions or []
                ],
            ),
            stat=statistic,
        ),
    )
