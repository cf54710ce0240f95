"""BatchChain: AWS Batch jobs on spot capacity, each step started by the one before it."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aws_cdk import Duration, Size, Stack, Token
from aws_cdk import aws_batch as batch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as events_targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import compliance_profile, default_key, grant_data_key_use
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
from pipeline_constructs.building_blocks.topic import secure_topic
from pipeline_constructs.building_blocks.validation import (
    argument_error,
    check_duration,
    check_is_duration,
    check_is_instance,
    check_not_empty,
    check_range,
    check_unique,
    claim_prefix,
)
from pipeline_constructs.glue.construct import GlueFunction

if TYPE_CHECKING:
    from pipeline_constructs.fleet.construct import SpotWorkerFleet

#: AWS Batch limits for a container job on EC2.
MIN_VCPUS, MAX_VCPUS = 1, 192
MIN_MEMORY_MIB, MAX_MEMORY_MIB = 4, 24 * 1024 * 1024
MIN_TIMEOUT = Duration.seconds(60)
STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")
#: Under the chain's prefix, where the glue function stores a message too large for SubmitJob (a claim
#: check, ``_messages/<run>/<step>.json``); no step name starts with "_", so no step's prefix is this.
CLAIMS_FOLDER = "_messages/"
#: What a link hands the next step; set by the glue, so a step's or link's own value would be overridden
#: (or override the real message).
LINK_VARIABLES = ("DOWNLOAD_MESSAGE", "PREVIOUS_JOB_ID")
X86_INSTANCE_CLASSES = (ec2.InstanceClass.M6I, ec2.InstanceClass.C6I, ec2.InstanceClass.R6I, ec2.InstanceClass.M5)
ARM_INSTANCE_CLASSES = (ec2.InstanceClass.M7G, ec2.InstanceClass.C7G, ec2.InstanceClass.R7G, ec2.InstanceClass.M6G)


@dataclass(frozen=True)
class ChainLink:
    """How a step hands over to the next one.

    ``ChainLink.message(...)``: the step publishes to the chain's SNS topic; the next step gets the message,
    unchanged, in ``DOWNLOAD_MESSAGE`` (the users' way: the next job needs the previous job's output).
    ``ChainLink.on_success(...)``: when the step's job SUCCEEDED (EventBridge), the next step starts with
    ``PREVIOUS_JOB_ID``; the job needs no code for it. ``environment``: static variables for the next step
    (values become strings: ``{"PARALLELISM": 15}`` arrives as ``"15"``).
    """

    kind: str
    environment: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def message(cls, environment: Mapping[str, Any] | None = None) -> ChainLink:
        return cls("message", dict(environment or {}))

    @classmethod
    def on_success(cls, environment: Mapping[str, Any] | None = None) -> ChainLink:
        return cls("success", dict(environment or {}))


@dataclass(frozen=True)
class ChainStep:
    """One Batch job of a chain.

    :param name: step name (letters, digits, ``-``, ``_``; used in job names and S3 prefixes).
    :param image: where the container image comes from, said explicitly: :meth:`StepImage.from_directory`
        (a directory with a Dockerfile, built as an image asset) or :meth:`StepImage.from_registry` (a tagged
        or digested registry URI). A ``Path`` is a directory; a ``str`` is a directory if one exists there,
        else a registry image that must carry a tag or digest.
    :param command: the container command. Default: the image's entrypoint and command.
    :param vcpus: vCPUs. Default: 1. Range: 1 to 192.
    :param memory_mib: memory in MiB. Default: 2048. Range: 4 to 25165824.
    :param environment: static environment variables. Default: none.
    :param secrets: environment variables from Secrets Manager / SSM (``batch.Secret``). Default: none.
    :param timeout: per attempt. Default: 1 hour. Range: at least 60 seconds.
    :param attempts: tries in all; spot reclaims and host errors are retried, application errors are not.
        Default: 3. Range: 1 to 10.
    :param array_size: run as an array job of this many children (fan-out). Default: None. Range: 2 to 10000.
    :param link: how this step starts the next one. Default: None (required on every step but the last).
    :param reads_from: steps whose S3 prefixes this step may read. Default: the previous step.
    :param consumes: a queue this step drains (e.g. a fleet's downstream queue); the job role may receive,
        delete and change visibility, and ``PIPELINE_QUEUE_URL`` names it. Default: None.
    :param feeds: a :class:`SpotWorkerFleet` this step sends tasks to: the job role may send to its queue and
        upload under its ``input/`` (``PIPELINE_FEEDS_QUEUE_URL``, ``PIPELINE_FEEDS_BUCKET``,
        ``PIPELINE_FEEDS_PREFIX``), and the glue function starts the fleet from zero as soon as the step runs
        and again when it succeeds, without waiting for CloudWatch. Default: None.
    """

    name: str
    image: str | Path | StepImage
    command: Sequence[str] | None = None
    vcpus: int = 1
    memory_mib: int = 2048
    environment: Mapping[str, str] = field(default_factory=dict)
    secrets: Mapping[str, batch.Secret] = field(default_factory=dict)
    timeout: Duration = field(default_factory=lambda: Duration.hours(1))
    attempts: int = 3
    array_size: int | None = None
    link: ChainLink | None = None
    reads_from: Sequence[str] | None = None
    consumes: sqs.IQueue | None = None
    feeds: SpotWorkerFleet | None = None


class StepImage:
    """Where a step's container image comes from: a directory built at deploy, or a registry image.

    Checked at synth: the directory exists and holds a Dockerfile; the registry image names a tag or digest
    (``:latest`` by omission would change under a running chain). Use the two factories.

    :param directory: the directory to build. Default: None (a registry image).
    :param uri: the registry image. Default: None (a directory).
    """

    def __init__(self, *, directory: Path | None = None, uri: str | None = None) -> None:
        self.directory, self.uri = directory, uri

    @classmethod
    def from_directory(cls, directory: str | Path) -> StepImage:
        """A directory with a Dockerfile, built and pushed to the CDK's asset repository by ``cdk deploy``."""
        return cls(directory=Path(directory))

    @classmethod
    def from_registry(cls, uri: str) -> StepImage:
        """A registry image, e.g. ``public.ecr.aws/docker/library/python:3.13-slim`` or ``repo@sha256:...``."""
        return cls(uri=uri)

    def container_image(self, scope: Construct, argument: str, *, also_allowed: str = "") -> ecs.ContainerImage:
        """The image, checked; ``also_allowed`` prefixes what the error says is allowed (for a plain string)."""
        if self.directory is not None:
            if not (self.directory / "Dockerfile").is_file():
                raise argument_error(scope, argument, str(self.directory), "a directory with a Dockerfile")
            return ecs.ContainerImage.from_asset(
                str(self.directory.resolve()), exclude=["__pycache__", "*.pyc", "tests"]
            )
        # A registry image must name its version: an untagged string is most often a directory that does not
        # exist (a typo, a relative path from elsewhere), which would otherwise become "<name>:latest".
        uri = str(self.uri)
        if "@sha256:" not in uri and ":" not in uri.rsplit("/", 1)[-1]:
            allowed = f"{also_allowed}a registry image with a tag or digest (repository:tag)"
            raise argument_error(scope, argument, uri, allowed)
        return ecs.ContainerImage.from_registry(uri)


class BatchChain(Construct):
    """A chain of AWS Batch jobs on a spot compute environment, linked by SNS messages or job success.

    :param steps: the steps, in order. At least one.
    :param chain_name: name in job names, status records and the glue config. Default: the construct id.
    :param network: where the compute environment runs. Default: a new :class:`PipelineNetwork`.
    :param compute_environment: an existing (shared) compute environment; ``max_vcpus``, ``architecture`` and
        ``instance_classes`` are then ignored. Default: a new spot environment.
    :param job_queue: an existing job queue. Default: a new queue on ``compute_environment``.
    :param max_vcpus: the created compute environment's ceiling. Default: 64. Range: 1 to 100000.
    :param architecture: ``x86_64`` or ``arm64`` for the created compute environment. Default: ``x86_64``.
    :param instance_classes: instance classes for the created environment. Default: m6i, c6i, r6i, m5
        (Graviton m7g, c7g, r7g, m6g for arm64).
    :param bucket: data bucket. Default: a new :class:`DataBucket`.
    :param table: status store (run tracking, trigger guards). Default: the stack's shared one (:meth:`StatusStore.of`).
    :param prefix: the chain's S3 prefix; step ``s`` writes under ``<prefix><s>/``. Default: ``<chain_name>/``.
    :param log_retention: retention of the job and glue log groups. Default: one month (a year under the
        compliance profile).
    :param detailed_monitoring: one-minute EC2 metrics for the created compute environment's instances,
        about $2.10 a month per running instance; basic five-minute metrics are free. Default: False (True
        under the compliance profile).
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        steps: Sequence[ChainStep],
        chain_name: str | None = None,
        network: PipelineNetwork | None = None,
        compute_environment: batch.IManagedComputeEnvironment | None = None,
        job_queue: batch.IJobQueue | None = None,
        max_vcpus: int = 64,
        architecture: str = "x86_64",
        instance_classes: Sequence[ec2.InstanceClass] | None = None,
        bucket: s3.IBucket | None = None,
        table: dynamodb.ITable | None = None,
        prefix: str | None = None,
        log_retention: logs.RetentionDays | None = None,
        detailed_monitoring: bool | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        check_is_instance(self, "network", network, PipelineNetwork, NETWORK_HINT)
        self.steps = list(steps)
        self.chain_name = chain_name or construct_id
        self._created_compute = compute_environment is None
        self._validate(max_vcpus=max_vcpus, architecture=architecture)
        self.prefix = prefix if prefix is not None else f"{self.chain_name}/"
        self.bucket: s3.IBucket = bucket or DataBucket(self, "Data").bucket
        claim_prefix(self, self.bucket, self.prefix)
        self.table: dynamodb.ITable = table or StatusStore.of(self).table
        self.log_group = pipeline_log_group(self, "JobLogs", retention=log_retention)
        #: The topic's customer-managed key (the stack's under the compliance profile), else None.
        self.topic_key = default_key(self, None)
        self.topic: sns.ITopic = secure_topic(self, "Topic", encryption_key=self.topic_key)

        if compute_environment is None:
            network = network or PipelineNetwork(self, "Network")
            compute_environment = self._spot_compute_environment(
                network,
                max_vcpus,
                architecture,
                instance_classes,
                compliance_profile(self) if detailed_monitoring is None else detailed_monitoring,
            )
        self.compute_environment = compute_environment
        self.job_queue: batch.IJobQueue = job_queue or batch.JobQueue(
            self,
            "JobQueue",
            compute_environments=[batch.OrderedComputeEnvironment(compute_environment=compute_environment, order=1)],
            priority=1,
        )
        self.job_roles: dict[str, iam.Role] = {}
        self.job_definitions: dict[str, batch.EcsJobDefinition] = {
            step.name: self._job_definition(index, step) for index, step in enumerate(self.steps)
        }
        self.glue = GlueFunction.of(self, log_retention=log_retention, network=network)
        self._wire_links()
        PipelineManifest.of(self).register(
            "chains",
            self.chain_name,
            {
                "jobQueue": self.job_queue.job_queue_arn,
                "steps": [step.name for step in self.steps],
                "jobDefinitions": {name: d.job_definition_arn for name, d in self.job_definitions.items()},
                "table": self.table.table_name,
                "topic": self.topic.topic_arn,
                "glueFailureQueueUrl": self.glue.failure_queue.queue_url,
            },
        )

    # ------------------------------------------------------------------ validation

    def _validate(self, *, max_vcpus: int, architecture: str) -> None:
        check_not_empty(self, "steps", self.steps)
        check_unique(self, "steps[].name", [step.name for step in self.steps])
        check_range(self, "max_vcpus", max_vcpus, minimum=1, maximum=100000)
        if architecture not in ("x86_64", "arm64"):
            raise argument_error(self, "architecture", architecture, "x86_64, arm64")
        if not STEP_NAME.match(self.chain_name):
            raise argument_error(self, "chain_name", self.chain_name, "1-41 letters, digits, - or _")
        names = [step.name for step in self.steps]
        for index, step in enumerate(self.steps):
            at = f"steps[{index}]"
            if not STEP_NAME.match(step.name):
                raise argument_error(self, f"{at}.name", step.name, "1-41 letters, digits, - or _, alphanumeric first")
            check_range(self, f"{at}.vcpus", step.vcpus, minimum=MIN_VCPUS, maximum=MAX_VCPUS)
            # A job asking more vCPUs than the compute environment may run sits in RUNNABLE forever.
            if self._created_compute and not Token.is_unresolved(max_vcpus) and step.vcpus > max_vcpus:
                raise argument_error(self, f"{at}.vcpus", step.vcpus, f"at most the chain's max_vcpus ({max_vcpus})")
            reserved = sorted(n for n in step.environment if n.startswith("PIPELINE_") or n in LINK_VARIABLES)
            if reserved:
                raise argument_error(
                    self,
                    f"{at}.environment",
                    reserved,
                    f"names other than PIPELINE_* and {', '.join(LINK_VARIABLES)} (set by the chain)",
                )
            link_reserved = sorted(
                n
                for n in (step.link.environment if step.link else {})
                if n in LINK_VARIABLES or n.startswith("PIPELINE_")
            )
            if link_reserved:
                raise argument_error(
                    self,
                    f"{at}.link.environment",
                    link_reserved,
                    f"names other than PIPELINE_* and {', '.join(LINK_VARIABLES)} (set by the link)",
                )
            check_range(self, f"{at}.memory_mib", step.memory_mib, minimum=MIN_MEMORY_MIB, maximum=MAX_MEMORY_MIB)
            check_is_duration(self, f"{at}.timeout", step.timeout)
            check_duration(self, f"{at}.timeout", step.timeout, minimum=MIN_TIMEOUT)
            check_range(self, f"{at}.attempts", step.attempts, minimum=1, maximum=10)
            check_range(self, f"{at}.array_size", step.array_size, minimum=2, maximum=10000)
            last = index == len(self.steps) - 1
            if last and step.link is not None:
                raise argument_error(self, f"{at}.link", step.link.kind, "None on the last step (nothing follows)")
            if not last and step.link is None:
                raise argument_error(self, f"{at}.link", None, "ChainLink.message() or ChainLink.on_success()")
            if step.link is not None and step.link.kind not in ("message", "success"):
                raise argument_error(self, f"{at}.link.kind", step.link.kind, "message, success")
            if step.feeds is not None and not hasattr(step.feeds, "grant_wake"):
                raise argument_error(self, f"{at}.feeds", type(step.feeds).__name__, "a SpotWorkerFleet")
            for source in step.reads_from or []:
                if source not in names:
                    raise argument_error(self, f"{at}.reads_from", source, f"step names: {', '.join(names)}")

    # ------------------------------------------------------------------ compute

    def _spot_compute_environment(
        self,
        network: PipelineNetwork,
        max_vcpus: int,
        architecture: str,
        instance_classes: Sequence[ec2.InstanceClass] | None,
        detailed_monitoring: bool,
    ) -> batch.ManagedEc2EcsComputeEnvironment:
        arm = architecture == "arm64"
        launch_template = ec2.LaunchTemplate(
            self,
            "LaunchTemplate",
            require_imdsv2=True,
            # One hop: job containers get credentials from their job role (the ECS credentials endpoint) and
            # the region from their environment, so the instance's own credentials stay out of their reach.
            http_put_response_hop_limit=1,
            detailed_monitoring=detailed_monitoring,
            block_devices=[
                ec2.BlockDevice(
                    device_name="/dev/xvda",
                    volume=ec2.BlockDeviceVolume.ebs(50, encrypted=True, volume_type=ec2.EbsDeviceVolumeType.GP3),
                )
            ],
        )
        if not detailed_monitoring:
            acknowledge_control(launch_template, "ec2_launch_template_monitoring_enabled_check", BASIC_MONITORING)
        environment = batch.ManagedEc2EcsComputeEnvironment(
            self,
            "ComputeEnvironment",
            vpc=network.vpc,
            vpc_subnets=network.subnet_selection,
            security_groups=[network.security_group(self, "SecurityGroup", description="Batch jobs: no inbound")],
            spot=True,
            allocation_strategy=batch.AllocationStrategy.SPOT_PRICE_CAPACITY_OPTIMIZED,
            minv_cpus=0,
            maxv_cpus=max_vcpus,
            instance_classes=list(instance_classes or (ARM_INSTANCE_CLASSES if arm else X86_INSTANCE_CLASSES)),
            use_optimal_instance_classes=False,
            launch_template=launch_template,
            update_to_latest_image_version=True,
        )
        acknowledge(
            environment,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/AmazonEC2ContainerServiceforEC2Role]",
            "The ECS container instance role needs AmazonEC2ContainerServiceforEC2Role (ECS agent, ECR pulls); "
            "AWS maintains that policy as the agent's needs change.",
        )
        return environment

    def _image(self, step: ChainStep) -> ecs.ContainerImage:
        argument = f"steps[{step.name}].image"
        if isinstance(step.image, StepImage):
            return step.image.container_image(self, argument)
        path = Path(step.image)
        if isinstance(step.image, Path) or path.is_dir():
            if not path.is_dir():
                raise argument_error(self, argument, str(step.image), "an existing directory")
            return StepImage.from_directory(path).container_image(self, argument)
        return StepImage.from_registry(str(step.image)).container_image(
            self, argument, also_allowed="an existing directory (pass a Path), or "
        )

    def _job_definition(self, index: int, step: ChainStep) -> batch.EcsJobDefinition:
        role = iam.Role(
            self,
            f"{step.name}JobRole",
            assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
            description=f"{self.node.path} step {step.name}: its own S3 prefix and its chain's topic",
        )
        self.job_roles[step.name] = role
        sources = (
            list(step.reads_from) if step.reads_from is not None else ([self.steps[index - 1].name] if index else [])
        )
        readable = [self.bucket.arn_for_objects(f"{self.prefix}{name}/*") for name in sources]
        previous_link = self.steps[index - 1].link if index else None
        if previous_link is not None and previous_link.kind == "message":
            # A message too large for SubmitJob arrives as a claim check (DOWNLOAD_MESSAGE_S3).
            readable.append(self.bucket.arn_for_objects(f"{self.prefix}{CLAIMS_FOLDER}*/{step.name}.json"))
        own = self.bucket.arn_for_objects(f"{self.prefix}{step.name}/*")
        role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=[own]))
        if readable:
            role.add_to_principal_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=readable))
        role.add_to_principal_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{self.prefix}{name}/*" for name in [step.name, *sources]]}},
            )
        )
        if self.bucket.encryption_key is not None:
            grant_data_key_use(self.bucket.encryption_key, role)
        if step.link is not None and step.link.kind == "message":
            self._grant_publish_only(role)
        if step.consumes is not None:
            step.consumes.grant_consume_messages(role)
        acknowledge_wildcard_resources(
            role,
            [own, *readable],
            f"Object access limited to this step's own prefix ('{self.prefix}{step.name}/') and the prefixes "
            "of the steps it reads from; object keys are only known at run time.",
        )
        region = Stack.of(self).region
        environment = {
            # The SDKs otherwise ask the metadata service, which a job container cannot reach (one hop).
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            **dict(step.environment),
            "PIPELINE_BUCKET": self.bucket.bucket_name,
            "PIPELINE_PREFIX": f"{self.prefix}{step.name}/",
            "PIPELINE_CHAIN": self.chain_name,
            "PIPELINE_STEP": step.name,
        }
        if step.link is not None and step.link.kind == "message":
            # Only a step that may publish (the grant above) is told where: one without a message link that
            # published anyway would fail on AccessDenied.
            environment["PIPELINE_TOPIC_ARN"] = self.topic.topic_arn
        if step.consumes is not None:
            environment["PIPELINE_QUEUE_URL"] = step.consumes.queue_url
        if step.feeds is not None:
            step.feeds.grant_submit(role)
            environment["PIPELINE_FEEDS_QUEUE_URL"] = step.feeds.queue.queue_url
            environment["PIPELINE_FEEDS_BUCKET"] = step.feeds.bucket.bucket_name
            environment["PIPELINE_FEEDS_PREFIX"] = step.feeds.prefix
        container = batch.EcsEc2ContainerDefinition(
            self,
            f"{step.name}Container",
            image=self._image(step),
            command=list(step.command) if step.command else None,
            cpu=step.vcpus,
            memory=Size.mebibytes(step.memory_mib),
            environment=environment,
            secrets=dict(step.secrets) or None,
            job_role=role,
            logging=ecs.LogDriver.aws_logs(stream_prefix=f"{self.chain_name}-{step.name}", log_group=self.log_group),
        )
        if container.execution_role is not None:
            acknowledge(
                container.execution_role,
                "AwsSolutions-IAM5[Resource::*]",
                "ecr:GetAuthorizationToken (to pull the step's image) has no resource-level permissions; every "
                "other statement of this execution role names its repository or log group.",
            )
        return batch.EcsJobDefinition(
            self,
            f"{step.name}Job",
            container=container,
            timeout=step.timeout,
            retry_attempts=step.attempts,
            retry_strategies=[
                # First match wins: the host went away (spot reclaim, instance failure) -> try again;
                batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.SPOT_INSTANCE_RECLAIMED),
                batch.RetryStrategy.of(batch.Action.RETRY, batch.Reason.CANNOT_PULL_CONTAINER),
                # any exit code of the application itself -> fail now, retrying a bug wastes money.
                batch.RetryStrategy.of(batch.Action.EXIT, batch.Reason.custom(on_exit_code="*")),
            ],
            propagate_tags=True,
        )

    # ------------------------------------------------------------------ links

    def _wire_links(self) -> None:
        steps_config = []
        for step in self.steps:
            entry: dict[str, Any] = {
                "name": step.name,
                "jobDefinition": self.job_definitions[step.name].job_definition_arn,
            }
            if step.array_size:
                entry["arraySize"] = step.array_size
            if step.link is not None:
                # Values stay as given; the glue turns each into a string (15 -> "15") when it submits.
                entry["link"] = {"kind": step.link.kind, "environment": dict(step.link.environment)}
            if step.feeds is not None:
                step.feeds.grant_wake(self.glue.role)
                entry["wakes"] = step.feeds.auto_scaling_group.auto_scaling_group_name
            steps_config.append(entry)
        has_message_link = any(s.link and s.link.kind == "message" for s in self.steps)
        self.glue.register_chain(
            self.chain_name,
            {
                "jobQueue": self.job_queue.job_queue_arn,
                "topicArn": self.topic.topic_arn if has_message_link else None,
                "table": self.table.table_name,
                "steps": steps_config,
                **({"claims": self._grant_claim_checks()} if has_message_link else {}),
            },
            owner=self,
        )
        self.glue.grant_submit(self.job_queue, list(self.job_definitions.values()))
        self.glue.grant_status(self.table)
        self.glue.use_guard_table(self.table)
        if has_message_link:
            # Made here rather than with SnsEventSource, whose ids (the topic's id under the shared
            # function) would collide between the chains of one stack.
            sns.Subscription(
                self,
                "GlueSubscription",
                topic=self.topic,
                protocol=sns.SubscriptionProtocol.LAMBDA,
                endpoint=self.glue.function.function_arn,
                dead_letter_queue=self.glue.failure_queue,
            )
            # In the chain's scope, beside its topic: chains of one id in two scopes do not collide, and in a
            # nested stack the permission stays with the topic it names.
            lambda_.CfnPermission(
                self,
                "GlueInvokeFromTopic",
                action="lambda:InvokeFunction",
                function_name=self.glue.function.function_arn,
                principal="sns.amazonaws.com",
                source_arn=self.topic.topic_arn,
            )
        # Every state change of this chain's jobs: run tracking, and the success links.
        self.job_state_rule = events.Rule(
            self,
            "JobStateChanges",
            description=f"Batch job state changes of chain {self.chain_name}",
            event_pattern=events.EventPattern(
                source=["aws.batch"],
                detail_type=["Batch Job State Change"],
                detail={
                    "jobQueue": [self.job_queue.job_queue_arn],
                    "jobDefinition": [d.job_definition_arn for d in self.job_definitions.values()],
                },
            ),
            targets=[
                events_targets.LambdaFunction(
                    self.glue.function, dead_letter_queue=self.glue.failure_queue, retry_attempts=8
                )
            ],
        )

    # ------------------------------------------------------------------ grants

    def grant_start(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` start a run by hand: SubmitJob of the first step on this chain's queue."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["batch:SubmitJob"],
            resource_arns=[self.job_queue.job_queue_arn, self.job_definitions[self.steps[0].name].job_definition_arn],
        )

    def _grant_claim_checks(self) -> dict[str, str]:
        """Let the glue function store messages too large for SubmitJob under this chain's claims folder."""
        claims = self.bucket.arn_for_objects(f"{self.prefix}{CLAIMS_FOLDER}*")
        policy = self.glue.add_to_chain_policy(
            iam.PolicyStatement(actions=["s3:PutObject"], resources=[claims]), owner=self.bucket
        )
        if self.bucket.encryption_key is not None:
            grant_data_key_use(self.bucket.encryption_key, self.glue.role)
        acknowledge_wildcard_resources(
            policy,
            [claims],
            f"Messages too large for SubmitJob, stored as claim checks under {self.chain_name}'s "
            f"'{self.prefix}{CLAIMS_FOLDER}' only; their keys are chain runs known at run time.",
        )
        return {"bucket": self.bucket.bucket_name, "prefix": f"{self.prefix}{CLAIMS_FOLDER}"}

    def grant_publish(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` publish to the chain's topic (as a step with a message link does)."""
        return self._grant_publish_only(grantee)

    def _grant_publish_only(self, grantee: iam.IGrantable) -> iam.Grant:
        # sns:Publish alone: the topic's AWS managed key is usable through SNS by any principal of the
        # account, so the KMS grant Topic.grant_publish adds (on key/*) would only widen the role.
        grant = iam.Grant.add_to_principal(
            grantee=grantee, actions=["sns:Publish"], resource_arns=[self.topic.topic_arn]
        )
        if self.topic_key is not None:  # a customer-managed key: SNS encrypts with the publisher's rights
            grant_data_key_use(self.topic_key, grantee)
        return grant

    @property
    def first_job_definition(self) -> batch.EcsJobDefinition:
        return self.job_definitions[self.steps[0].name]
