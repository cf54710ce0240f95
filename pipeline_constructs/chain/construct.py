"""BatchChain: AWS Batch jobs on spot capacity, each step started by the one before it.

The construct ties together its steps and their job definitions (:mod:`.steps`), their job roles
(:mod:`.permissions`), its links to the stack's glue function (:mod:`.links`) and its compute (:mod:`.compute`).
:class:`ChainStep`, :class:`ChainLink`, :class:`StepImage`, :class:`FanOut` and :class:`ChildFailure` are
importable from here as well.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import ArnFormat, Duration, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from constructs import Construct

from pipeline_constructs.building_blocks.compliance import compliance_profile, default_key
from pipeline_constructs.building_blocks.data_bucket import DataBucket
from pipeline_constructs.building_blocks.logs import pipeline_log_group
from pipeline_constructs.building_blocks.manifest import PipelineManifest
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

# ChainStep, ChainLink and StepImage were defined here (as pipeline_constructs.batch_chain) before.
# What pipeline_constructs.batch_chain (this module's path before the component folders) had: still there.
from pipeline_constructs.chain.compute import (
    ARM_INSTANCE_CLASSES,
    DEFAULT_RUNNABLE_TIMEOUT,
    MAX_RUNNABLE_TIMEOUT,
    MIN_RUNNABLE_TIMEOUT,
    X86_INSTANCE_CLASSES,
    check_steps_fit,
    instance_architectures,
    instance_families,
    own_job_queue,
    spot_compute_environment,
)
from pipeline_constructs.chain.fan_out import ChildFailure, FanOut
from pipeline_constructs.chain.links import CLAIMS_FOLDER, LINK_VARIABLES, ChainLink, wire_links
from pipeline_constructs.chain.permissions import grant_publish_only
from pipeline_constructs.chain.steps import (
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    MIN_MEMORY_MIB,
    MIN_TIMEOUT,
    MIN_VCPUS,
    STEP_NAME,
    ChainStep,
    StepImage,
    as_step_image,
    check_steps,
    job_definition_name,
    step_job_definition,
)
from pipeline_constructs.glue.construct import GlueFunction

__all__ = [
    "ARM_INSTANCE_CLASSES",
    "CLAIMS_FOLDER",
    "LINK_VARIABLES",
    "MAX_MEMORY_MIB",
    "MAX_VCPUS",
    "MIN_MEMORY_MIB",
    "MIN_TIMEOUT",
    "MIN_VCPUS",
    "X86_INSTANCE_CLASSES",
    "BatchChain",
    "ChainLink",
    "ChainStep",
    "ChildFailure",
    "FanOut",
    "StepImage",
]


class BatchChain(Construct):
    """A chain of AWS Batch jobs on a spot compute environment, linked by SNS messages or job success.

    :param steps: the steps, in order. At least one.
    :param chain_name: name in job names, status records and the glue config. Default: the construct id.
    :param network: where the compute environment runs. Default: a new :class:`PipelineNetwork`.
    :param compute_environment: an existing (shared) compute environment; ``max_vcpus``, ``architecture`` and
        ``instance_classes`` are then ignored. Default: a new spot environment.
    :param job_queue: an existing job queue. Default: a new queue on ``compute_environment``.
    :param runnable_timeout: how long a job may wait in RUNNABLE for spot capacity before the chain's own
        queue cancels it: the job fails, its run fails with the reason on its status row (``pipeline
        status``), and :meth:`PipelineAlarms.watch_chain` notifies. A job no allowed instance type can hold is
        cancelled after 10 minutes. Not for your own ``job_queue`` (give it ``job_state_time_limit_actions``).
        Default: 4 hours. Range: 10 minutes to 24 hours.
    :param max_vcpus: the created compute environment's ceiling. Default: 64. Range: 1 to 100000.
    :param architecture: ``x86_64`` or ``arm64`` for the created compute environment, and the platform steps
        built from a directory are built for on a ``compute_environment`` of your own (on the chain's own,
        the architecture of its ``instance_classes``). Default: ``x86_64``.
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
    :param require_image_digests: every registry image must be pinned by digest (``repository@sha256:...``):
        a tag can be moved to other content (a retried job, or the next run, would pull it); a tag is then
        one error at synth naming the step and the image. Directory images are built and pushed by content
        hash either way. Default: False.

    Each step's job definition has a fixed name (:func:`job_definition_name`), kept by every revision a deploy
    registers: the chain's rules and grants match it across revisions, so a run in flight across a deploy
    keeps its status rows, its links and its failure alerts.
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
        runnable_timeout: Duration | None = None,
        max_vcpus: int = 64,
        architecture: str = "x86_64",
        instance_classes: Sequence[ec2.InstanceClass] | None = None,
        bucket: s3.IBucket | None = None,
        table: dynamodb.ITable | None = None,
        prefix: str | None = None,
        log_retention: logs.RetentionDays | None = None,
        detailed_monitoring: bool | None = None,
        require_image_digests: bool = False,
    ) -> None:
        super().__init__(scope, construct_id)
        check_is_instance(self, "network", network, PipelineNetwork, NETWORK_HINT)
        self.steps = list(steps)
        self.chain_name = chain_name or construct_id
        self.require_image_digests = require_image_digests
        self._validate(max_vcpus=max_vcpus, architecture=architecture, own_compute=compute_environment is None)
        own_classes = (instance_classes or []) if compute_environment is None else None
        self._validate_compute(runnable_timeout, job_queue, own_classes=own_classes, architecture=architecture)
        self.prefix = prefix if prefix is not None else f"{self.chain_name}/"
        self.bucket: s3.IBucket = bucket or DataBucket(self, "Data").bucket
        claim_prefix(self, self.bucket, self.prefix, scratch_folders=())  # a chain keeps no scratch
        self.table: dynamodb.ITable = table or StatusStore.of(self).table
        self.log_group = pipeline_log_group(self, "JobLogs", retention=log_retention)
        #: The topic's customer-managed key (the stack's under the compliance profile), else None.
        self.topic_key = default_key(self, None)
        self.topic: sns.ITopic = secure_topic(self, "Topic", encryption_key=self.topic_key)

        if compute_environment is None:
            network = network or PipelineNetwork(self, "Network")
            compute_environment = spot_compute_environment(
                self,
                network,
                max_vcpus=max_vcpus,
                architecture=architecture,
                instance_classes=instance_classes,
                detailed_monitoring=compliance_profile(self) if detailed_monitoring is None else detailed_monitoring,
                steps=self.steps,
            )
        self.compute_environment: batch.IManagedComputeEnvironment = compute_environment
        self.job_queue: batch.IJobQueue = job_queue or own_job_queue(
            self, compute_environment, runnable_timeout or DEFAULT_RUNNABLE_TIMEOUT
        )
        self.job_roles: dict[str, iam.Role] = {}
        self.job_definitions: dict[str, batch.EcsJobDefinition] = {
            step.name: step_job_definition(self, index, step) for index, step in enumerate(self.steps)
        }
        self.glue = GlueFunction.of(self, log_retention=log_retention, network=network)
        self.job_state_rule = wire_links(self)
        self._register_in_manifest()

    def _validate(self, *, max_vcpus: int, architecture: str, own_compute: bool) -> None:
        check_not_empty(self, "steps", self.steps)
        check_unique(self, "steps[].name", [step.name for step in self.steps])
        check_range(self, "max_vcpus", max_vcpus, minimum=1, maximum=100000)
        if architecture not in ("x86_64", "arm64"):
            raise argument_error(self, "architecture", architecture, "x86_64, arm64")
        if not STEP_NAME.match(self.chain_name):
            raise argument_error(self, "chain_name", self.chain_name, "1-41 letters, digits, - or _")
        # max_vcpus bounds the steps only on the environment the chain creates with it.
        check_steps(self, self.steps, max_vcpus=max_vcpus if own_compute else None)

    def _image_architecture(self, instance_classes: Sequence[ec2.InstanceClass] | None, architecture: str) -> str:
        """The one architecture of the instances a step's directory image runs on (see ``architecture``)."""
        architectures = instance_architectures(instance_classes, architecture)
        built = [step for step in self.steps if as_step_image(self, step)[0].directory is not None]
        if len(architectures) > 1 and built:
            allowed = (
                f"a registry image (a multi-platform one), or instance_classes of one architecture: they mix "
                f"{' and '.join(sorted(architectures))}, and a directory is built for one platform"
            )
            raise argument_error(self, f"steps[{built[0].name}].image", str(built[0].image), allowed)
        return architectures.pop() if len(architectures) == 1 else architecture

    def _validate_compute(
        self,
        runnable_timeout: Duration | None,
        job_queue: batch.IJobQueue | None,
        *,
        own_classes: Sequence[ec2.InstanceClass] | None,
        architecture: str,
    ) -> None:
        """``own_classes``: the instance classes of the chain's own environment ([]: the architecture's
        default ones), None on an environment of the user's."""
        #: The platform of the images built from a directory: the architecture of the instances that run them.
        self.image_architecture = self._image_architecture(own_classes, architecture)
        families = [] if own_classes is None else instance_families(own_classes, architecture)
        check_is_duration(self, "runnable_timeout", runnable_timeout)
        check_duration(
            self, "runnable_timeout", runnable_timeout, minimum=MIN_RUNNABLE_TIMEOUT, maximum=MAX_RUNNABLE_TIMEOUT
        )
        if runnable_timeout is not None and job_queue is not None:
            allowed = "None with your own job_queue (give that queue job_state_time_limit_actions)"
            raise argument_error(self, "runnable_timeout", f"{runnable_timeout.to_seconds():g} seconds", allowed)
        # The steps must fit an instance type of the environment the chain creates (families: its classes).
        check_steps_fit(self, self.steps, families)

    def _register_in_manifest(self) -> None:
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

    # ------------------------------------------------------------------ grants

    def grant_start(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` start a run by hand: SubmitJob of the first step (any revision) on this chain's queue."""
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["batch:SubmitJob"],
            resource_arns=[self.job_queue.job_queue_arn, self.job_definition_arns(self.steps[0].name)[0]],
        )

    def job_definition_arns(self, *step_names: str) -> list[str]:
        """IAM resources for every revision of the steps' job definitions (all steps if none is named):
        ``job-definition/<name>:*``. A job definition ARN names one revision, and SubmitJob is authorized
        against the revision it runs."""
        return [f"{arn}*" for arn in self._revisionless_arns(step_names)]

    def job_definition_event_filter(self, *step_names: str) -> list[dict[str, str]]:
        """An EventBridge ``jobDefinition`` filter matching a job of any revision of the steps' job
        definitions (all steps if none is named): a run in flight when a deploy revises them stays matched."""
        return [{"prefix": arn} for arn in self._revisionless_arns(step_names)]

    def _revisionless_arns(self, step_names: Sequence[str]) -> list[str]:
        """``arn:...:job-definition/<name>:``, the revision left out (the colon keeps ``<name>2`` out)."""
        stack = Stack.of(self)
        return [
            stack.format_arn(
                service="batch",
                resource="job-definition",
                resource_name=f"{job_definition_name(self, name)}:",
                arn_format=ArnFormat.SLASH_RESOURCE_NAME,
            )
            for name in step_names or [step.name for step in self.steps]
        ]

    def grant_publish(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` publish to the chain's topic (as a step with a message link does)."""
        return grant_publish_only(self, grantee)

    @property
    def first_job_definition(self) -> batch.EcsJobDefinition:
        return self.job_definitions[self.steps[0].name]
