"""A BatchChain's steps: :class:`ChainStep` and :class:`StepImage` as users write them, checked against AWS
Batch's limits, and each step's job definition (container, environment, retries)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from aws_cdk import Duration, Names, Size, Stack, Token
from aws_cdk import aws_batch as batch
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from pipeline_constructs.building_blocks.nag import acknowledge
from pipeline_constructs.building_blocks.validation import (
    argument_error,
    check_duration,
    check_is_duration,
    check_memory_mib,
    check_range,
)
from pipeline_constructs.chain.fan_out import FanOut, check_fan_out
from pipeline_constructs.chain.links import LINK_VARIABLES, ChainLink, is_message_link
from pipeline_constructs.chain.permissions import step_job_role

if TYPE_CHECKING:
    from pipeline_constructs.chain.construct import BatchChain
    from pipeline_constructs.fleet.construct import SpotWorkerFleet

#: AWS Batch limits for a container job on EC2.
MIN_VCPUS, MAX_VCPUS = 1, 192
MIN_MEMORY_MIB, MAX_MEMORY_MIB = 4, 24 * 1024 * 1024
MIN_TIMEOUT = Duration.seconds(60)
STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$")
#: A registry image pinned to its content: ``repository@sha256:`` and the manifest's 64 hex digits.
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
#: What a directory image is built for, by the architecture of the instances that run it.
PLATFORMS = {"x86_64": ecr_assets.Platform.LINUX_AMD64, "arm64": ecr_assets.Platform.LINUX_ARM64}
#: AWS Batch's longest job definition name.
MAX_DEFINITION_NAME = 128


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
    :param array_size: run as an array job of this many children, known at synth. Default: None. Range: 2 to 10000.
    :param fan_out: map over a list known at run time (:class:`FanOut`): one array child per item of the previous
        step's message or of the manifest it names; the next step (the join) starts once every child finished.
        ``timeout`` and ``attempts`` apply to each child. Default: None (one job).
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
    fan_out: FanOut | None = None


class StepImage:
    """Where a step's container image comes from: a directory built at deploy, or a registry image.

    Checked at synth: the directory exists and holds a Dockerfile; the registry image names a tag or digest
    (``:latest`` by omission would change under a running chain), and only a digest when the chain has
    ``require_image_digests``. A directory is built for the architecture of the instances that run it
    (``linux/amd64`` or ``linux/arm64``), whatever machine deploys. Use the two factories.

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

    def container_image(
        self,
        scope: Construct,
        argument: str,
        *,
        architecture: str = "x86_64",
        require_digest: bool = False,
        also_allowed: str = "",
    ) -> ecs.ContainerImage:
        """The image, checked; a directory built for ``architecture`` (``x86_64`` or ``arm64``);
        ``require_digest``: a registry image must be pinned by digest; ``also_allowed`` prefixes what the error
        says is allowed (for a plain string)."""
        if self.directory is not None:
            if not (self.directory / "Dockerfile").is_file():
                raise argument_error(scope, argument, str(self.directory), "a directory with a Dockerfile")
            # Built where `cdk deploy` runs: without a platform, an arm64 laptop builds arm64 images for x86
            # instances, and every job fails with "exec format error".
            return ecs.ContainerImage.from_asset(
                str(self.directory.resolve()),
                exclude=["__pycache__", "*.pyc", "tests"],
                platform=PLATFORMS[architecture],
            )
        # A registry image must name its version: an untagged string is most often a directory that does not
        # exist (a typo, a relative path from elsewhere), which would otherwise become "<name>:latest".
        uri = str(self.uri)
        digested = "@" in uri
        if digested and not DIGEST.search(uri):
            raise argument_error(scope, argument, uri, "a digest of the form repository@sha256:<64 hex digits>")
        if require_digest and not digested:
            allowed = "a registry image pinned by digest (repository@sha256:<64 hex digits>): a tag can be moved"
            raise argument_error(scope, argument, uri, f"{allowed}, and the chain has require_image_digests=True")
        if not digested and ":" not in uri.rsplit("/", 1)[-1]:
            allowed = f"{also_allowed}a registry image with a tag or digest (repository:tag)"
            raise argument_error(scope, argument, uri, allowed)
        return ecs.ContainerImage.from_registry(uri)


def check_steps(scope: Construct, steps: Sequence[ChainStep], *, max_vcpus: int | None) -> None:
    """Each step within AWS Batch's limits and the chain's: a valid name, a link on every step but the last,
    no variable the chain or its links set, and (``max_vcpus``: the chain's own compute environment's) no
    more vCPUs than its compute environment runs."""
    names = [step.name for step in steps]
    for index, step in enumerate(steps):
        at = f"steps[{index}]"
        if not STEP_NAME.match(step.name):
            raise argument_error(scope, f"{at}.name", step.name, "1-41 letters, digits, - or _, alphanumeric first")
        check_range(scope, f"{at}.vcpus", step.vcpus, minimum=MIN_VCPUS, maximum=MAX_VCPUS)
        # A job asking more vCPUs than the compute environment may run sits in RUNNABLE forever.
        if max_vcpus is not None and not Token.is_unresolved(max_vcpus) and step.vcpus > max_vcpus:
            raise argument_error(scope, f"{at}.vcpus", step.vcpus, f"at most the chain's max_vcpus ({max_vcpus})")
        _check_reserved_names(scope, at, step)
        check_range(scope, f"{at}.memory_mib", step.memory_mib, minimum=MIN_MEMORY_MIB, maximum=MAX_MEMORY_MIB)
        _check_plausible(scope, at, step)
        check_is_duration(scope, f"{at}.timeout", step.timeout)
        check_duration(scope, f"{at}.timeout", step.timeout, minimum=MIN_TIMEOUT)
        check_range(scope, f"{at}.attempts", step.attempts, minimum=1, maximum=10)
        check_range(scope, f"{at}.array_size", step.array_size, minimum=2, maximum=10000)
        last = index == len(steps) - 1
        if last and step.link is not None:
            raise argument_error(scope, f"{at}.link", step.link.kind, "None on the last step (nothing follows)")
        if not last and step.link is None:
            raise argument_error(scope, f"{at}.link", None, "ChainLink.message() or ChainLink.on_success()")
        if step.link is not None and step.link.kind not in ("message", "success"):
            raise argument_error(scope, f"{at}.link.kind", step.link.kind, "message, success")
        check_fan_out(scope, steps, index)
        if step.feeds is not None and not hasattr(step.feeds, "grant_wake"):
            raise argument_error(scope, f"{at}.feeds", type(step.feeds).__name__, "a SpotWorkerFleet")
        for source in step.reads_from or []:
            if source not in names:
                raise argument_error(scope, f"{at}.reads_from", source, f"step names: {', '.join(names)}")


def _check_plausible(scope: Construct, at: str, step: ChainStep) -> None:
    """What AWS accepts but is a mistake: memory given in GiB, a command as one string (each character would
    be an argument), environment values that are not strings (a link's are made strings; a step's are not)."""
    check_memory_mib(scope, f"{at}.memory_mib", step.memory_mib)
    if isinstance(step.command, str):
        shown = step.command.split()
        raise argument_error(scope, f"{at}.command", step.command, f"a list of strings, such as {shown!r}")
    for name, value in step.environment.items():
        if not isinstance(value, str) and not Token.is_unresolved(value):
            raise argument_error(scope, f"{at}.environment[{name!r}]", value, f"a string, such as {str(value)!r}")


def _check_reserved_names(scope: Construct, at: str, step: ChainStep) -> None:
    """No ``PIPELINE_*`` or link variable in the step's or its link's environment: the chain sets those."""
    for argument, environment, set_by in (
        (f"{at}.environment", step.environment, "the chain"),
        (f"{at}.link.environment", step.link.environment if step.link else {}, "the link"),
    ):
        reserved = sorted(n for n in environment if n.startswith("PIPELINE_") or n in LINK_VARIABLES)
        if reserved:
            raise argument_error(
                scope,
                argument,
                reserved,
                f"names other than PIPELINE_* and {', '.join(LINK_VARIABLES)} (set by {set_by})",
            )


def step_job_definition(chain: BatchChain, index: int, step: ChainStep) -> batch.EcsJobDefinition:
    """The job definition of ``chain``'s step at ``index``, with its job role (in ``chain.job_roles``)."""
    role = step_job_role(chain, index, step)
    chain.job_roles[step.name] = role
    container = batch.EcsEc2ContainerDefinition(
        chain,
        f"{step.name}Container",
        image=_container_image(chain, step),
        command=list(step.command) if step.command else None,
        cpu=step.vcpus,
        memory=Size.mebibytes(step.memory_mib),
        environment=_environment(chain, step),
        secrets=dict(step.secrets) or None,
        job_role=role,
        logging=ecs.LogDriver.aws_logs(stream_prefix=f"{chain.chain_name}-{step.name}", log_group=chain.log_group),
    )
    if container.execution_role is not None:
        acknowledge(
            container.execution_role,
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken (to pull the step's image) has no resource-level permissions; every "
            "other statement of this execution role names its repository or log group.",
        )
    return batch.EcsJobDefinition(
        chain,
        f"{step.name}Job",
        job_definition_name=job_definition_name(chain, step.name),
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


def job_definition_name(chain: BatchChain, step_name: str) -> str:
    """The name of ``step_name``'s job definition in ``chain``: fixed at synth, and kept by every revision a
    deploy registers (a generated name would change with each), so rules and grants can name the definition
    across revisions. Unique per account and region: the chain's construct path (its stack's and stage's
    names too) with a hash of it, then the step."""
    chain_part = Names.unique_resource_name(
        chain, max_length=MAX_DEFINITION_NAME - len(step_name) - 1, separator="-", allowed_special_characters="_-"
    )
    return f"{chain_part}-{step_name}"


def _container_image(chain: BatchChain, step: ChainStep) -> ecs.ContainerImage:
    """The step's image, checked, and built for the chain's instances if it is a directory."""
    image, also_allowed = as_step_image(chain, step)
    return image.container_image(
        chain,
        f"steps[{step.name}].image",
        architecture=chain.image_architecture,
        require_digest=chain.require_image_digests,
        also_allowed=also_allowed,
    )


def as_step_image(chain: BatchChain, step: ChainStep) -> tuple[StepImage, str]:
    """``step``'s image as a :class:`StepImage` (a ``Path`` or existing directory, else a registry URI), and
    what an error on a plain string also allows."""
    if isinstance(step.image, StepImage):
        return step.image, ""
    path = Path(step.image)
    if isinstance(step.image, Path) or path.is_dir():
        if not path.is_dir():
            raise argument_error(chain, f"steps[{step.name}].image", str(step.image), "an existing directory")
        return StepImage.from_directory(path), ""
    return StepImage.from_registry(str(step.image)), "an existing directory (pass a Path), or "


def _environment(chain: BatchChain, step: ChainStep) -> dict[str, str]:
    """The step's variables, then what the chain tells it: its bucket and prefix, its topic, queue and fleet."""
    region = Stack.of(chain).region
    environment = {
        # The SDKs otherwise ask the metadata service, which a job container cannot reach (one hop).
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        **dict(step.environment),
        "PIPELINE_BUCKET": chain.bucket.bucket_name,
        "PIPELINE_PREFIX": f"{chain.prefix}{step.name}/",
        "PIPELINE_CHAIN": chain.chain_name,
        "PIPELINE_STEP": step.name,
    }
    if is_message_link(step.link):
        # Only a step that may publish (its job role's grant) is told where: one without a message link that
        # published anyway would fail on AccessDenied.
        environment["PIPELINE_TOPIC_ARN"] = chain.topic.topic_arn
    if step.consumes is not None:
        environment["PIPELINE_QUEUE_URL"] = step.consumes.queue_url
    if step.feeds is not None:
        environment["PIPELINE_FEEDS_QUEUE_URL"] = step.feeds.queue.queue_url
        environment["PIPELINE_FEEDS_BUCKET"] = step.feeds.bucket.bucket_name
        environment["PIPELINE_FEEDS_PREFIX"] = step.feeds.prefix
    return environment
