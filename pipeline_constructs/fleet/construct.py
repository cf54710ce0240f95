"""SpotWorkerFleet: EC2 spot workers that pull tasks from SQS, read and write S3, and lose nothing."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from aws_cdk import Acknowledgment, Aws, Duration, Token, Validations
from aws_cdk import aws_autoscaling as autoscaling
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import compliance_profile, grant_data_key_use
from pipeline_constructs.building_blocks.data_bucket import DataBucket
from pipeline_constructs.building_blocks.logs import pipeline_log_group
from pipeline_constructs.building_blocks.manifest import PipelineManifest
from pipeline_constructs.building_blocks.nag import (
    BASIC_MONITORING,
    acknowledge,
    acknowledge_control,
    acknowledge_wildcard_resources,
)
from pipeline_constructs.building_blocks.network import NETWORK_HINT, PipelineNetwork
from pipeline_constructs.building_blocks.status_store import StatusStore
from pipeline_constructs.building_blocks.task_queue import TaskQueue, grant_send
from pipeline_constructs.building_blocks.validation import (
    argument_error,
    check_duration,
    check_is_duration,
    check_is_instance,
    check_not_empty,
    check_range,
    check_task_function,
    check_visibility_covers,
    claim_prefix,
    seconds,
)
from pipeline_constructs.fleet.boot import WorkerDelivery, worker_user_data
from pipeline_constructs.fleet.permissions import grant_wake, grant_worker_permissions
from pipeline_constructs.fleet.scaling import (
    DRAIN_HOOK_NAME,
    add_backlog_scaling,
    add_drain_hook,
    add_wake_check,
    instance_refresh,
)
from pipeline_constructs.fleet.worker.config import SPARE_DELIVERIES

#: Several current-generation families of one size, so spot capacity is found in more pools.
#: Nitro types that encrypt traffic between instances (the Control Tower control CT.AUTOSCALING.PR.11), in
#: several families so spot capacity is deep.
DEFAULT_X86_INSTANCE_TYPES = ("m7i.large", "m6i.large", "m6a.large", "m7a.large", "c7i.large", "c6i.large", "c6a.large")
DEFAULT_ARM_INSTANCE_TYPES = ("m7g.large", "m7gd.large", "c7g.large", "c6gn.large", "r7g.large")


def is_graviton(instance_type: str) -> bool:
    """m7g.large, c6gn.xlarge, t4g.small, a1.medium: an arm64 (Graviton) instance type."""
    family = instance_type.split(".")[0]
    return family == "a1" or re.match(r"^[a-z]+\d+g", family) is not None


class SpotWorkerFleet(Construct):
    """An Auto Scaling group of EC2 spot workers consuming a task queue, scaled on the backlog, down to zero.

    :param worker_directory: directory with the task code (e.g. ``worker_images/sqs_worker``), its
        ``requirements.txt`` and, for container delivery, its ``Dockerfile``.
    :param task: the task function, ``module:function`` inside ``worker_directory``.
    :param network: where instances run. Default: a new :class:`PipelineNetwork` (public subnets, no NAT).
    :param queue: task queue to consume. Default: a new :class:`TaskQueue` with a DLQ. A queue of your own
        keeps its redrive policy: with ``maxReceiveCount`` N a task gets N - 1 attempts, and the last
        delivery records why it is dead-lettered (N = 1: one attempt, and no reason when its worker is lost).
    :param dead_letter_queue: the passed ``queue``'s DLQ, for alarms and the CLI. Default: the created one, or None.
    :param bucket: data bucket. Default: a new :class:`DataBucket`.
    :param table: status store table. Default: the stack's shared one (:meth:`StatusStore.of`).
    :param prefix: this fleet's key prefix in the bucket; it reads ``<prefix>input/`` and writes
        ``<prefix>output/`` and ``<prefix>intermediate/``. Default: the construct id in lower case plus ``/``.
    :param downstream_queue: where finished tasks are forwarded (the next stage). Default: None.
    :param delivery: how the code reaches instances. Default: ``WorkerDelivery.PYTHON_BUNDLE``.
    :param instance_types: instance types to draw spot capacity from. Default: seven x86 (or five Graviton,
        with ``architecture="arm64"``) ``large`` types that encrypt traffic between instances. At least one.
    :param architecture: ``x86_64`` or ``arm64``; chooses the Amazon Linux 2023 image. Default: ``x86_64``.
    :param min_size: instances kept running when idle. Default: 0. Range: 0 to ``max_size``.
    :param max_size: most instances. Default: 10. Range: 1 to 1000.
    :param on_demand_base_capacity: instances that are always on-demand. Default: 0 (all spot).
    :param on_demand_percentage_above_base: on-demand share above the base, in percent. Default: 0.
    :param tasks_per_worker: the backlog each instance should face (target tracking target). Default: 10.
    :param concurrency: tasks one worker runs at once, each in a process of its own (so a hung one can be
        stopped). Default: the instance's vCPU count.
    :param task_timeout: the longest one attempt of a task may take: past it the worker kills the task's
        process and counts a failed attempt ("timed out after N s"). Default: 15 minutes. Range: 1 s to 12 hours.
    :param visibility_timeout: the created queue's visibility timeout. Default: ``task_timeout`` plus 1 minute.
        At least ``task_timeout``; the worker's heartbeat extends it for tasks that run longer anyway.
    :param max_receive_count: attempts a task gets before it goes to the DLQ (created queue; its redrive
        policy allows ``SPARE_DELIVERIES`` deliveries more, on which a worker records why, so a worker lost
        on one of them still leaves a reason). Default: 3. Range: 1 to 997.
    :param environment: extra environment variables for the task code. Default: none.
    :param root_volume_size: root EBS volume in GiB (encrypted gp3). Default: 20. Range: 8 to 16384.
    :param log_retention: retention of the workers' log group. Default: one month (a year under the
        compliance profile).
    :param wake_check: look at the queue every minute (the stack's glue function) and start the fleet from
        zero when tasks wait, for producers that do not call :meth:`grant_wake`'s SetDesiredCapacity
        themselves; scaling on CloudWatch's SQS metrics alone starts it minutes late. About $0.08 a month
        (``pipeline cost``). Default: False.
    :param detailed_monitoring: one-minute EC2 metrics for the workers, about $2.10 a month per running
        instance; basic five-minute metrics are free. Default: False (True under the compliance profile).
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
        log_retention: logs.RetentionDays | None = None,
        wake_check: bool = False,
        detailed_monitoring: bool | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        check_is_instance(self, "network", network, PipelineNetwork, NETWORK_HINT)
        if detailed_monitoring is None:
            detailed_monitoring = compliance_profile(self)
        self.worker_directory = Path(worker_directory).resolve()
        self.task = task
        check_is_duration(self, "task_timeout", task_timeout)
        check_is_duration(self, "visibility_timeout", visibility_timeout)
        check_task_function(self, self.worker_directory, task)
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
            max_receive_count=max_receive_count,
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
        self.created_queue = queue is None
        if queue is None:
            task_queue = TaskQueue(
                self,
                "Tasks",
                visibility_timeout=visibility_timeout,
                consumer_timeout=self.task_timeout,
                # Deliveries beyond the attempts, on which a worker records why the task is dead-lettered.
                max_receive_count=max_receive_count + SPARE_DELIVERIES,
            )
            queue, dead_letter_queue = task_queue.queue, task_queue.dead_letter_queue
        self.queue: sqs.IQueue = queue
        self.dead_letter_queue: sqs.IQueue | None = dead_letter_queue
        self.max_receive_count = max_receive_count
        self.max_size = max_size
        self.visibility_timeout = visibility_timeout
        self.bucket: s3.IBucket = bucket or DataBucket(self, "Data").bucket
        claim_prefix(self, self.bucket, self.prefix)
        self.table: dynamodb.ITable = table or StatusStore.of(self).table
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
        user_data = worker_user_data(self, environment_variables)
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
            # One hop: a worker under systemd talks to the metadata service directly, and a token cannot leave
            # the instance. Two only for the container delivery, whose bridge network adds a hop.
            http_put_response_hop_limit=2 if delivery == WorkerDelivery.CONTAINER else 1,
            detailed_monitoring=detailed_monitoring,
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
            update_policy=instance_refresh(),
        )
        zones = self.network.selected_subnets().availability_zones
        if zones and not any(Token.is_unresolved(zone) for zone in zones):
            # Named as well as implied by the subnets: CT.AUTOSCALING.PR.1 reads this property for multi-AZ.
            self.auto_scaling_group.node.default_child.availability_zones = sorted(set(zones))
            Validations.of(self.auto_scaling_group).acknowledge(
                Acknowledgment(
                    id="CloudFormation-Validate::W3010",
                    reason="The zones are those of the group's subnets, named where the network was made; listed "
                    "again because the Control Tower control CT.AUTOSCALING.PR.1 reads them here.",
                )
            )
        self.drain_hook = add_drain_hook(self)
        grant_worker_permissions(self)
        add_backlog_scaling(self, tasks_per_worker)
        self.wake_check = add_wake_check(self) if wake_check else None
        self._acknowledge_findings()
        if not detailed_monitoring:
            acknowledge_control(self.launch_template, "ec2_launch_template_monitoring_enabled_check", BASIC_MONITORING)
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
        max_receive_count: int,
        queue: sqs.IQueue | None,
        dead_letter_queue: sqs.IQueue | None,
        visibility_given: bool,
    ) -> None:
        if self.architecture not in ("x86_64", "arm64"):
            raise argument_error(self, "architecture", self.architecture, "x86_64, arm64")
        check_not_empty(self, "instance_types", self.instance_types)
        # An AMI of one architecture does not boot on the other's instances: the group would never launch.
        wrong = [t for t in self.instance_types or [] if is_graviton(t) != (self.architecture == "arm64")]
        if wrong:
            kind = "Graviton (arm64)" if self.architecture == "arm64" else "x86_64"
            raise argument_error(self, "instance_types", wrong, f"{kind} types for architecture={self.architecture}")
        check_range(self, "max_size", max_size, minimum=1, maximum=1000)
        check_range(self, "min_size", min_size, minimum=0)
        if not Token.is_unresolved(min_size) and not Token.is_unresolved(max_size) and max_size < min_size:
            raise argument_error(self, "max_size", max_size, f"at least min_size ({min_size}) up to 1000")
        check_range(self, "on_demand_base_capacity", on_demand_base_capacity, minimum=0, maximum=max_size)
        check_range(self, "on_demand_percentage_above_base", on_demand_percentage_above_base, minimum=0, maximum=100)
        check_range(self, "tasks_per_worker", tasks_per_worker, minimum=1, maximum=100000)
        check_range(self, "concurrency", concurrency, minimum=1, maximum=1024)
        check_range(self, "root_volume_size", root_volume_size, minimum=8, maximum=16384, unit=" GiB")
        check_range(self, "max_receive_count", max_receive_count, minimum=1, maximum=1000 - SPARE_DELIVERIES)
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
        if self.created_queue:
            # Known at synth for a created queue: saves the worker a GetQueueAttributes call at start.
            variables["PIPELINE_VISIBILITY_TIMEOUT"] = str(int(seconds(self.visibility_timeout)))
            variables["PIPELINE_MAX_RECEIVE_COUNT"] = str(self.max_receive_count + SPARE_DELIVERIES)
            variables["PIPELINE_MAX_ATTEMPTS"] = str(self.max_receive_count)
        if seconds(self.task_timeout) is not None:
            variables["PIPELINE_TASK_TIMEOUT"] = str(int(seconds(self.task_timeout)))
        variables["PIPELINE_LIFECYCLE_HOOK"] = DRAIN_HOOK_NAME
        return variables | extra

    # ------------------------------------------------------------------ permissions

    def grant_submit(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let a producer enqueue tasks and upload their inputs under ``<prefix>input/``."""
        grant = grant_send(self.queue, grantee)
        inputs = self.bucket.arn_for_objects(f"{self.prefix}input/*")
        iam.Grant.add_to_principal(
            grantee=grantee, actions=["s3:PutObject", "s3:AbortMultipartUpload"], resource_arns=[inputs]
        )
        if self.bucket.encryption_key is not None:
            grant_data_key_use(self.bucket.encryption_key, grantee)
        if isinstance(grantee.grant_principal, Construct):
            acknowledge_wildcard_resources(
                grantee.grant_principal,
                [inputs],
                f"Uploads of task inputs to {self.node.path} only (its '{self.prefix}input/' prefix); their keys "
                "are the producer's files, known at run time.",
            )
        return grant

    def grant_wake(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let a producer start this fleet from zero right after it enqueued, without waiting minutes for
        CloudWatch's SQS metrics: SetDesiredCapacity on this group only (and DescribeAutoScalingGroups, which
        IAM cannot scope), as ``pipeline_constructs.glue.handler.wake_group`` calls them."""
        return grant_wake(self, grantee)

    def grant_read_outputs(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let a consumer (the next stage, an analyst's role) read this fleet's ``<prefix>output/``."""
        outputs = self.bucket.arn_for_objects(f"{self.prefix}output/*")
        grant = iam.Grant.add_to_principal(grantee=grantee, actions=["s3:GetObject"], resource_arns=[outputs])
        if self.bucket.encryption_key is not None:
            grant_data_key_use(self.bucket.encryption_key, grantee)
        if isinstance(grantee.grant_principal, Construct):
            acknowledge_wildcard_resources(
                grantee.grant_principal,
                [outputs],
                f"Read access to {self.node.path}'s outputs only (its '{self.prefix}output/' prefix); "
                "their keys are task ids known at run time.",
            )
        return grant

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
