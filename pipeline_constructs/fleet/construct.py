"""SpotWorkerFleet: EC2 spot workers that pull tasks from SQS, read and write S3, and lose nothing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from aws_cdk import Duration
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import compliance_profile
from pipeline_constructs.building_blocks.data_bucket import DataBucket
from pipeline_constructs.building_blocks.logs import pipeline_log_group
from pipeline_constructs.building_blocks.manifest import PipelineManifest
from pipeline_constructs.building_blocks.network import NETWORK_HINT, PipelineNetwork
from pipeline_constructs.building_blocks.status_store import StatusStore
from pipeline_constructs.building_blocks.task_queue import TaskQueue
from pipeline_constructs.building_blocks.validation import check_is_instance, claim_prefix
from pipeline_constructs.fleet.boot import WorkerDelivery, worker_environment, worker_user_data
from pipeline_constructs.fleet.instances import instance_role, worker_group, worker_launch_template
from pipeline_constructs.fleet.options import (
    DEFAULT_ARM_INSTANCE_TYPES,
    DEFAULT_X86_INSTANCE_TYPES,
    check_options,
    instance_types_or_default,
    is_graviton,
    prefix_or_default,
    timeouts_or_default,
)
from pipeline_constructs.fleet.permissions import grant_read_outputs, grant_submit, grant_wake, grant_worker_permissions
from pipeline_constructs.fleet.scaling import add_backlog_scaling, add_drain_hook, add_wake_check
from pipeline_constructs.fleet.tasks import WorkerTask, worker_task_of
from pipeline_constructs.fleet.worker.config import SPARE_DELIVERIES

# The instance type defaults and is_graviton live in .options now; they still import from here.
__all__ = [
    "DEFAULT_ARM_INSTANCE_TYPES",
    "DEFAULT_X86_INSTANCE_TYPES",
    "SpotWorkerFleet",
    "WorkerDelivery",
    "WorkerTask",
    "is_graviton",
]


class SpotWorkerFleet(Construct):
    """An Auto Scaling group of EC2 spot workers consuming a task queue, scaled on the backlog, down to zero.

    :param worker_directory: directory with the task code (e.g. ``worker_images/sqs_worker``), its
        ``requirements.lock`` (every package, pinned with hashes) and ``wheels/`` (checked at synth), and, for
        container delivery, its ``Dockerfile``.
    :param task: what runs per task: a :class:`WorkerTask` (a Python function, a command in any language, or
        a local HTTP app in the manner of Elastic Beanstalk's worker tier), or a task function's
        ``module:function`` inside ``worker_directory`` (``WorkerTask.function``).
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
    :param machine_image: the workers' image, for an image of your own or one pinned by id
        (``ec2.MachineImage.generic_linux({"us-east-1": "ami-..."})``). Default: Amazon Linux 2023 of the
        ``architecture``, looked up once at synth and kept in ``cdk.context.json`` (commit it), so that the
        image, and with it every worker, changes only when you ask: ``cdk context --reset <its key>``, then deploy.
        A stack without an account and region cannot look it up: its image is resolved at every deploy (a
        warning says so).
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

    #: The worker image, with ``delivery=WorkerDelivery.CONTAINER`` only (made by :mod:`.boot`).
    image: ecr_assets.DockerImageAsset

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        worker_directory: str | Path,
        task: str | WorkerTask,
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
        machine_image: ec2.IMachineImage | None = None,
        log_retention: logs.RetentionDays | None = None,
        wake_check: bool = False,
        detailed_monitoring: bool | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        check_is_instance(self, "network", network, PipelineNetwork, NETWORK_HINT)
        # The options become attributes, defaults resolved; most are checked here, before anything is made.
        self.detailed_monitoring = compliance_profile(self) if detailed_monitoring is None else detailed_monitoring
        self.worker_directory = Path(worker_directory).resolve()
        self.task = worker_task_of(task)
        self.task_timeout, self.visibility_timeout = timeouts_or_default(self, task_timeout, visibility_timeout)
        self.task_variables = self.task.bind(self)
        self.delivery = delivery
        self.architecture = architecture
        self.instance_types = instance_types_or_default(instance_types, architecture)
        self.min_size = min_size
        self.max_size = max_size
        self.on_demand_base_capacity = on_demand_base_capacity
        self.on_demand_percentage_above_base = on_demand_percentage_above_base
        self.tasks_per_worker = tasks_per_worker
        self.concurrency = concurrency
        self.root_volume_size = root_volume_size
        self.machine_image = machine_image
        self.max_receive_count = max_receive_count
        check_options(self, queue, dead_letter_queue, visibility_given=visibility_timeout is not None)
        self.prefix = prefix_or_default(construct_id, prefix)
        self._add_data(network, queue, dead_letter_queue, bucket, table, downstream_queue, log_retention)
        self._add_instances(environment)
        self.zero_alarm = add_backlog_scaling(self)
        self.wake_check = add_wake_check(self) if wake_check else None
        self._register_in_manifest()

    def _add_data(
        self,
        network: PipelineNetwork | None,
        queue: sqs.IQueue | None,
        dead_letter_queue: sqs.IQueue | None,
        bucket: s3.IBucket | None,
        table: dynamodb.ITable | None,
        downstream_queue: sqs.IQueue | None,
        log_retention: logs.RetentionDays | None,
    ) -> None:
        """The network, the task queue (with a DLQ, unless passed), the bucket and this fleet's prefix in it, the
        status table and the workers' log group: the given ones, else made here."""
        self.network = network or PipelineNetwork(self, "Network")
        self.created_queue = queue is None
        if queue is None:
            task_queue = TaskQueue(
                self,
                "Tasks",
                visibility_timeout=self.visibility_timeout,
                consumer_timeout=self.task_timeout,
                # Deliveries beyond the attempts, on which a worker records why the task is dead-lettered.
                max_receive_count=self.max_receive_count + SPARE_DELIVERIES,
            )
            queue, dead_letter_queue = task_queue.queue, task_queue.dead_letter_queue
        self.queue: sqs.IQueue = queue
        self.dead_letter_queue: sqs.IQueue | None = dead_letter_queue
        self.bucket: s3.IBucket = bucket or DataBucket(self, "Data").bucket
        claim_prefix(self, self.bucket, self.prefix)
        self.table: dynamodb.ITable = table or StatusStore.of(self).table
        self.downstream_queue = downstream_queue
        self.log_group = pipeline_log_group(self, "Logs", retention=log_retention)

    def _add_instances(self, environment: Mapping[str, str] | None) -> None:
        """The instance role and its permissions, the security group, the launch template, the Auto Scaling
        group and its drain hook."""
        self.role = instance_role(self)
        self.security_group = self.network.security_group(
            self, "SecurityGroup", description=f"{self.node.path} workers: no inbound traffic"
        )
        user_data = worker_user_data(self, worker_environment(self, environment))
        self.launch_template = worker_launch_template(self, user_data)
        self.auto_scaling_group = worker_group(self)
        self.drain_hook = add_drain_hook(self)
        self.scale_in_protection_policy = grant_worker_permissions(self)

    def _register_in_manifest(self) -> None:
        """Where the operator CLI finds this fleet's queues, data, status and group."""
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
                # What `pipeline report` prices the fleet's instance-hours at.
                "instanceTypes": list(self.instance_types),
                **({"concurrency": self.concurrency} if self.concurrency is not None else {}),
            },
        )

    # ------------------------------------------------------------------ permissions

    def grant_submit(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let a producer enqueue tasks and upload their inputs under ``<prefix>input/``."""
        return grant_submit(self, grantee)

    def grant_wake(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let a producer start this fleet from zero right after it enqueued, without waiting minutes for
        CloudWatch's SQS metrics: SetDesiredCapacity on this group only (and DescribeAutoScalingGroups, which
        IAM cannot scope), as ``pipeline_constructs.glue.handler.wake_group`` calls them."""
        return grant_wake(self, grantee)

    def grant_read_outputs(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let a consumer (the next stage, an analyst's role) read this fleet's ``<prefix>output/``."""
        return grant_read_outputs(self, grantee)
