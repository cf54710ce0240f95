"""The compute of a synthesized stack as local processes: its Lambda functions run from their assets, its
Batch job definitions on a local Batch endpoint, its worker fleets behind a local Auto Scaling endpoint.

Each is read from the template (and the cloud assembly's assets), with the environment the template gives
it and the credentials of its role (:mod:`.environments`).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_constructs.local.autoscaling import LocalAutoScaling, LocalGroup
from pipeline_constructs.local.batch import JobDefinitionSpec, LocalBatch
from pipeline_constructs.local.environments import ProcessEnvironments
from pipeline_constructs.local.events import Target
from pipeline_constructs.local.fleets import LocalFleet, parse_user_data
from pipeline_constructs.local.iam import IamGate
from pipeline_constructs.local.lambdas import LocalFunction
from pipeline_constructs.local.provisioning import cdk_path
from pipeline_constructs.local.resolver import Resolver
from pipeline_constructs.local.resource_policies import destination_sender
from pipeline_constructs.ops.assembly import SynthesizedStack

#: Time compression for a laptop: short polls and flushes (the visibility timeout is capped too).
WORKER_TIMINGS = {
    "PIPELINE_WAIT_SECONDS": "1",
    "PIPELINE_ACK_DELAY_SECONDS": "1",
    "PIPELINE_WORKER_HEARTBEAT_SECONDS": "5",
    "PIPELINE_RETRY_DELAY": "1",
    "PIPELINE_CONCURRENCY": "2",
    "PIPELINE_STOP_GRACE_SECONDS": "5",
}


class LocalCompute:
    """The stack's functions (by ARN), its Batch endpoint and its fleets (by logical id), created from the
    template by the ``create_*`` methods; what cannot run locally is counted in ``not_emulated``."""

    def __init__(
        self,
        stack: SynthesizedStack,
        resolver: Resolver,
        *,
        endpoint: str,
        region: str,
        assets: dict[str, Path],
        iam: IamGate | None,
        env_overrides: dict[str, str],
        log_dir: Path,
        not_emulated: Counter[str],
    ) -> None:
        self.stack = stack
        self.resolver = resolver
        self.region = region
        self.assets = assets
        self.log_dir = log_dir
        self.not_emulated = not_emulated
        self.autoscaling = LocalAutoScaling()
        self.environments = ProcessEnvironments(
            endpoint=endpoint,
            region=region,
            autoscaling_endpoint=self.autoscaling.endpoint,
            iam=iam,
            overrides=env_overrides,
        )
        self.functions: dict[str, LocalFunction] = {}
        self.batch: LocalBatch | None = None
        self.fleets: dict[str, LocalFleet] = {}

    # ------------------------------------------------------------------ Batch

    def create_batch(self, *, emit: Callable[[dict[str, Any]], object], fail_steps: set[str]) -> None:
        """The local Batch endpoint over the template's job definitions and queues (if it has any); job
        state changes go to ``emit`` as Batch events; the steps in ``fail_steps`` fail (exit 3)."""
        definitions: dict[str, JobDefinitionSpec] = {}
        for logical_id, resource in self.stack.resources_of_type("AWS::Batch::JobDefinition").items():
            spec = self._job_definition(logical_id, resource)
            definitions[spec.arn] = spec
        queues = {self.resolver.ref(lid) for lid in self.stack.resources_of_type("AWS::Batch::JobQueue")}
        if definitions or queues:
            self.batch = LocalBatch(
                definitions,
                queues,
                base_environment={},
                emit=emit,
                log_dir=self.log_dir,
                region=self.region,
                fail_steps=fail_steps,
            )
            # Jobs reach the Batch endpoint too (a step may submit the next one): known only now.
            self.environments.batch_endpoint = self.batch.endpoint
            self.batch.launcher.base_environment = self.environments.base()

    def _job_definition(self, logical_id: str, resource: dict[str, Any]) -> JobDefinitionSpec:
        props = self.resolver.resolve(resource["Properties"])
        container = props.get("ContainerProperties", {})
        image = str(container.get("Image", ""))
        requirements = {r["Type"]: r["Value"] for r in container.get("ResourceRequirements", [])}
        retry = props.get("RetryStrategy", {})
        environment = self.environments.override({e["Name"]: str(e["Value"]) for e in container.get("Environment", [])})
        # The job's role, as the ECS credentials endpoint would give it to the container.
        role = resource["Properties"].get("ContainerProperties", {}).get("JobRoleArn")
        return JobDefinitionSpec(
            arn=self.resolver.ref(logical_id),
            name=self.resolver.physical_name(logical_id),
            environment=environment | {"AWS_ACCESS_KEY_ID": self.environments.key_for_role(role)},
            image_dir=self.assets.get(image.rsplit(":", 1)[-1]),
            image=image,
            command=container.get("Command"),
            vcpus=int(float(requirements.get("VCPU", container.get("Vcpus", 1)))),
            attempts=int(retry.get("Attempts", 1)),
            evaluate_on_exit=retry.get("EvaluateOnExit", []),
            timeout_seconds=props.get("Timeout", {}).get("AttemptDurationSeconds"),
        )

    # ------------------------------------------------------------------ Lambda

    def create_functions(self, *, deliver: Callable[[Target, Any], None]) -> None:
        """The template's functions, with their EventInvokeConfig: an invocation that fails its retries goes
        to ``deliver(on-failure destination, Lambda's failure record)``, sent by Lambda with the function's role."""
        configs = {}
        for resource in self.stack.resources_of_type("AWS::Lambda::EventInvokeConfig").values():
            props = self.resolver.resolve(resource["Properties"])
            configs[props["FunctionName"]] = props
        for logical_id, resource in self.stack.resources_of_type("AWS::Lambda::Function").items():
            props = resource["Properties"]
            code_dir = self._code_dir(logical_id, props.get("Code", {}))
            if code_dir is None:
                continue
            name = self.resolver.physical_name(logical_id)
            variables = self.resolver.resolve(props.get("Environment", {}).get("Variables", {}))
            config = configs.get(name, {})
            failure_arn = config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
            arn = self.resolver.get_att(logical_id, "Arn")
            self.functions[arn] = LocalFunction(
                name=name,
                arn=arn,
                code_dir=code_dir,
                handler=props.get("Handler", "index.handler"),
                environment=dict(os.environ)
                | self.environments.override(variables)
                | self.environments.base(self.environments.key_for_role(props.get("Role"))),
                timeout=int(props.get("Timeout", 3)),
                retry_attempts=int(config.get("MaximumRetryAttempts", 2)),
                on_failure=_sender(
                    deliver, Target(failure_arn, sender=destination_sender(self.stack, self.resolver, logical_id))
                )
                if failure_arn
                else None,
                log_dir=self.log_dir,
            )

    def _code_dir(self, logical_id: str, code: dict[str, Any]) -> Path | None:
        """The function's code: inline code written out, or its asset's directory; None if neither."""
        if "ZipFile" in code:
            code_dir = self.log_dir / f"inline-{logical_id}"
            code_dir.mkdir(exist_ok=True)
            (code_dir / "index.py").write_text(self.resolver.resolve(code["ZipFile"]))
            return code_dir
        asset_hash = str(code.get("S3Key", "")).removesuffix(".zip")
        if asset_hash not in self.assets:
            self.not_emulated[f"AWS::Lambda::Function ({logical_id}: code not a local asset)"] += 1
            return None
        return self.assets[asset_hash]

    # ------------------------------------------------------------------ fleets

    def create_fleets(self, *, workers: int, from_zero: bool, visibility_timeout: int, watch_spot: bool) -> None:
        """A local fleet of ``workers`` worker processes (none with ``from_zero``: a wake starts them) per
        SpotWorkerFleet group, registered with the local Auto Scaling endpoint, and start them. Visibility
        timeouts are capped at ``visibility_timeout``; ``watch_spot``: workers watch their instance metadata."""
        templates = self.stack.resources_of_type("AWS::EC2::LaunchTemplate")
        for logical_id, resource in self.stack.resources_of_type("AWS::AutoScaling::AutoScalingGroup").items():
            props = resource["Properties"]
            spec = props.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {}).get(
                "LaunchTemplateSpecification"
            ) or props.get("LaunchTemplate", {})
            launch_data = (
                templates.get(spec.get("LaunchTemplateId", {}).get("Ref"), {})
                .get("Properties", {})
                .get("LaunchTemplateData", {})
            )
            worker = self._worker_setup(logical_id, launch_data, visibility_timeout)
            if worker is None:
                continue
            environment, downloads = worker
            fleet = self.fleets[logical_id] = LocalFleet(
                environment.get("PIPELINE_FLEET_NAME", cdk_path(self.stack, logical_id)),
                environment=environment,
                task_dir=self.assets[downloads["task"]],
                runtime_dir=self.assets[downloads["runtime"]],
                workers=0 if from_zero else workers,
                group=self.resolver.physical_name(logical_id),
                log_dir=self.log_dir,
                watch_spot=watch_spot,
            )
            # The group as producers see it: at zero with from_zero (a SetDesiredCapacity, a wake, starts its
            # workers), else at the run's worker count.
            group = LocalGroup(
                fleet.group_name,
                max_size=max(int(props.get("MaxSize", 1)), workers),
                desired=0 if from_zero else workers,
                on_desired=fleet.set_desired,
            )
            self.autoscaling.register_group(group)
        for fleet in self.fleets.values():
            fleet.start()

    def _worker_setup(
        self, logical_id: str, launch_data: dict[str, Any], visibility_timeout: int
    ) -> tuple[dict[str, str], dict[str, str]] | None:
        """(worker environment, local zip name -> asset hash) from the group's launch template; None, and
        counted as not emulated, when the group is not a SpotWorkerFleet's that runs from S3 assets."""
        not_run = "AWS::AutoScaling::AutoScalingGroup ({}: {})"
        if launch_data.get("UserData") is None:
            self.not_emulated[not_run.format(logical_id, "no user data")] += 1
            return None
        try:
            environment, downloads = parse_user_data(self.resolver.decode_user_data(launch_data["UserData"]))
        except ValueError:
            self.not_emulated[not_run.format(logical_id, "not a worker fleet")] += 1
            return None
        if "task" not in downloads or "runtime" not in downloads:
            self.not_emulated[not_run.format(logical_id, "container delivery")] += 1
            return None
        profile = launch_data.get("IamInstanceProfile", {}).get("Arn")
        visibility = min(int(environment.get("PIPELINE_VISIBILITY_TIMEOUT", visibility_timeout)), visibility_timeout)
        environment = (
            self.environments.override(environment)
            | self.environments.base(self.environments.key_for_instance_profile(profile))
            | WORKER_TIMINGS
            | {"PIPELINE_VISIBILITY_TIMEOUT": str(visibility)}
        )
        return environment, downloads

    def first_stage_fleets(self) -> list[LocalFleet]:
        """The fleets no other fleet feeds: where submitted tasks go."""
        downstream = {f.downstream_queue_url for f in self.fleets.values()}
        return [f for f in self.fleets.values() if f.queue_url not in downstream]

    def busy(self) -> bool:
        """True while a job runs or a function invocation is under way."""
        if self.batch is not None and self.batch.busy():
            return True
        return any(function.busy() for function in self.functions.values())

    def stop(self) -> None:
        """Stop every worker, function environment and job, and the local endpoints."""
        for fleet in self.fleets.values():
            fleet.stop()
        for function in self.functions.values():
            function.shutdown()
        if self.batch is not None:
            self.batch.close()
        self.autoscaling.close()


def _sender(deliver: Callable[[Target, Any], None], target: Target) -> Callable[[dict[str, Any]], None]:
    """``deliver`` bound to one target: a function's on-failure destination."""

    def send(record: dict[str, Any]) -> None:
        deliver(target, record)

    return send
