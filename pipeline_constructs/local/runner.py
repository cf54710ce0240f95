"""LocalPipeline: a synthesized stack brought up on an embedded moto server, with its compute run locally.

Nothing here knows the example app: every queue, function, job, schedule and fleet comes from the template
and the cloud assembly's asset manifest.
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
import os
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from pipeline_constructs.glue.handler import wake_group
from pipeline_constructs.local.autoscaling import LocalAutoScaling, LocalGroup
from pipeline_constructs.local.batch import JobDefinitionSpec, LocalBatch
from pipeline_constructs.local.cron import UnsupportedSchedule, due
from pipeline_constructs.local.events import LocalEventBus, LocalRule, Target
from pipeline_constructs.local.fleets import LocalFleet, parse_user_data
from pipeline_constructs.local.iam import ADMIN_KEY, IamGate
from pipeline_constructs.local.lambdas import LocalFunction
from pipeline_constructs.local.resolver import ACCOUNT, Resolver
from pipeline_constructs.ops.assembly import SynthesizedStack

log = logging.getLogger("pipeline.local")

#: Resource kinds the local run creates or runs; everything else is control plane (IAM, VPC, alarms...).
EMULATED = {
    "AWS::S3::Bucket": "created in the emulator",
    "AWS::SQS::Queue": "created in the emulator",
    "AWS::SNS::Topic": "created in the emulator",
    "AWS::SNS::Subscription": "created (sqs) or delivered locally (lambda)",
    "AWS::DynamoDB::Table": "created in the emulator",
    "AWS::SSM::Parameter": "created in the emulator (the glue's chain configuration)",
    "AWS::Lambda::Function": "run locally from its asset",
    "AWS::Lambda::EventInvokeConfig": "retries and on-failure destination applied",
    "AWS::Batch::JobQueue": "local Batch endpoint",
    "AWS::Batch::JobDefinition": "local Batch endpoint, run from its image directory",
    "AWS::Batch::ComputeEnvironment": "local Batch endpoint (parallel slots)",
    "AWS::Events::Rule": "local event bus",
    "AWS::Scheduler::Schedule": "fired on demand or on its schedule",
    "AWS::AutoScaling::AutoScalingGroup": "local worker processes",
    "AWS::AutoScaling::LifecycleHook": "workers drain and complete it (local Auto Scaling endpoint)",
    "AWS::EC2::LaunchTemplate": "user data read for the worker environment",
}
#: With the IAM check on (the default): the policies every call of a function, job or worker is held against.
IAM_CHECKED = {
    "AWS::IAM::Role": "each function's, job's and fleet's calls checked against its policies",
    "AWS::IAM::Policy": "statements evaluated for every call of the role's component",
    "AWS::IAM::ManagedPolicy": "statements evaluated for every call of the role's component",
    "AWS::IAM::InstanceProfile": "names the role of a fleet's workers",
    "AWS::KMS::Key": "its use checked with every call on the data it encrypts (compliance profile)",
}


@dataclass
class Faults:
    kill_worker_every: float | None = None
    poison: int = 0
    spot_notice_after: float | None = None
    fail_steps: set[str] = field(default_factory=set)
    lifecycle_after: float | None = None
    events: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        injected = []
        if self.kill_worker_every:
            injected.append(f"kill -9 of a random worker every {self.kill_worker_every:g} s")
        if self.poison:
            injected.append(f"{self.poison} poison task(s) (input object missing)")
        if self.spot_notice_after is not None:
            injected.append(f"spot interruption notice after {self.spot_notice_after:g} s")
        if self.lifecycle_after is not None:
            injected.append(f"termination lifecycle action after {self.lifecycle_after:g} s")
        for step in sorted(self.fail_steps):
            injected.append(f"step {step} fails (exit 3)")
        return injected


@dataclass
class Schedule:
    logical_id: str
    path: str
    expression: str
    time_zone: str
    target: Target
    kind: str  # "scheduler" or "rule"
    fired: int = 0
    input_text: str | None = None  # Scheduler's input, with <aws.scheduler.*> placeholders


class LocalPipeline:
    def __init__(
        self,
        stack: SynthesizedStack,
        assembly_dir: Path,
        *,
        endpoint: str,
        region: str,
        log_dir: Path,
        workers_per_fleet: int = 2,
        visibility_timeout: int = 15,
        env_overrides: dict[str, str] | None = None,
        faults: Faults | None = None,
        seed: int = 7,
        from_zero: bool = False,
        wake: bool = True,
        iam_check: bool = True,
        producers: Sequence[SynthesizedStack] = (),
    ) -> None:
        """``producers``: the stacks ``stack`` imports from (``Fn::ImportValue``), in the order they depend on
        each other; their buckets, queues, topics and tables are created too, under the same run."""
        self.stack = stack
        # from_zero: every fleet's group starts at zero workers, as a deployed one does after a quiet night;
        # wake: the sample tasks' submission wakes it, as `pipeline submit` does.
        self.from_zero, self.wake = from_zero, wake
        self.assembly_dir = assembly_dir
        self.endpoint = endpoint
        self.region = region
        self.log_dir = log_dir
        self.workers_per_fleet = workers_per_fleet
        self.visibility_timeout = visibility_timeout
        self.env_overrides = env_overrides or {}
        self.faults = faults or Faults()
        self.rng = random.Random(seed)
        self.run_id = uuid.uuid4().hex[:6]
        exports: dict[str, Any] = {}
        #: (stack, its resolver) of every stack this one imports from.
        self.producers: list[tuple[SynthesizedStack, Resolver]] = []
        for producer in producers:
            resolver = Resolver(
                producer.template,
                stack_name=producer.name,
                region=region,
                queue_url_base=endpoint,
                run_id=self.run_id,
                imports=dict(exports),
            )
            exports |= resolver.exports()
            self.producers.append((producer, resolver))
        self.resolver = Resolver(
            stack.template,
            stack_name=stack.name,
            region=region,
            queue_url_base=endpoint,
            run_id=self.run_id,
            imports=exports,
        )
        self.resources = stack.resources
        self.session = boto3.session.Session(
            aws_access_key_id="local", aws_secret_access_key="local", region_name=region
        )
        client_config = Config(retries={"mode": "standard"}, max_pool_connections=20)
        self.sqs = self.session.client("sqs", endpoint_url=endpoint, config=client_config)
        self.s3 = self.session.client("s3", endpoint_url=endpoint, config=client_config)
        self.sns = self.session.client("sns", endpoint_url=endpoint, config=client_config)
        self.dynamodb = self.session.client("dynamodb", endpoint_url=endpoint, config=client_config)
        self.ssm = self.session.client("ssm", endpoint_url=endpoint, config=client_config)
        self.assets = self._asset_manifest()
        self.functions: dict[str, LocalFunction] = {}
        self.schedules: list[Schedule] = []
        self.rules: list[LocalRule] = []
        self.fleets: dict[str, LocalFleet] = {}
        self.autoscaling = LocalAutoScaling()
        # Every call of a function, job or worker is held against its role's policies in the template.
        self.iam = IamGate(stack.template, self.resolver, region) if iam_check else None
        self.sns_taps: list[tuple[str, LocalFunction, str]] = []
        self.not_emulated: Counter[str] = Counter()
        self.submitted: dict[str, list[str]] = {}
        self.batch: LocalBatch | None = None
        self.bus: LocalEventBus | None = None
        self._stopping = threading.Event()
        self.log_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ assembly

    def _asset_manifest(self) -> dict[str, Path]:
        """Asset hash -> its staged directory in the cloud assembly (files and Docker images alike)."""
        manifest_path = self.assembly_dir / f"{self.stack.name}.assets.json"
        assets: dict[str, Path] = {}
        if manifest_path.is_file():
            manifest = json.loads(manifest_path.read_text())
            for asset_hash, entry in manifest.get("files", {}).items():
                assets[asset_hash] = self.assembly_dir / entry["source"]["path"]
            for asset_hash, entry in manifest.get("dockerImages", {}).items():
                assets[asset_hash] = self.assembly_dir / entry["source"]["directory"]
        return assets

    def _of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        return self.stack.resources_of_type(kind)

    def _path(self, logical_id: str) -> str:
        return self.resources[logical_id].get("Metadata", {}).get("aws:cdk:path", logical_id)

    def base_environment(self, access_key: str = ADMIN_KEY) -> dict[str, str]:
        """What every local process gets: the emulator, credentials (``access_key`` names the role whose
        policies its calls are checked against), the local Batch and Auto Scaling endpoints."""
        environment = {
            "AWS_ENDPOINT_URL": self._front(self.endpoint),
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        if self.batch is not None:
            environment["AWS_ENDPOINT_URL_BATCH"] = self._front(self.batch.endpoint)
        environment["AWS_ENDPOINT_URL_AUTO_SCALING"] = self._front(self.autoscaling.endpoint)
        return environment

    def _front(self, endpoint: str) -> str:
        return self.iam.front(endpoint) if self.iam is not None else endpoint

    def _key(self, role_reference: Any) -> str:
        return self.iam.key_for(role_reference) if self.iam is not None else ADMIN_KEY

    def _override(self, environment: dict[str, str]) -> dict[str, str]:
        """``--set-env NAME=VALUE`` replaces a variable wherever the template sets it."""
        return {k: self.env_overrides.get(k, v) for k, v in environment.items()}

    # ------------------------------------------------------------------ bring-up

    def start(self) -> None:
        emulated = set(EMULATED) | (set(IAM_CHECKED) if self.iam is not None else set())
        for resource in self.resources.values():
            if resource["Type"] not in emulated:
                self.not_emulated[resource["Type"]] += 1
        # What the stack imports (a bucket from a shared stack) exists before what uses it.
        for stack, resolver in [*self.producers, (self.stack, self.resolver)]:
            self._create_buckets(stack, resolver)
            self._create_queues(stack, resolver)
            self._create_topics(stack, resolver)
            self._create_tables(stack, resolver)
        self._create_parameters()
        self._create_batch()
        self._create_functions()
        self._create_subscriptions()
        self._create_rules_and_schedules()
        self._create_fleets()
        threading.Thread(target=self._poll_sns_taps, name="sns-taps", daemon=True).start()
        self._start_fault_injection()

    def _create_buckets(self, stack: SynthesizedStack, resolver: Resolver) -> None:
        for logical_id, resource in stack.resources_of_type("AWS::S3::Bucket").items():
            name = resolver.physical_name(logical_id)
            arguments: dict[str, Any] = {"Bucket": name}
            if self.region != "us-east-1":
                arguments["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
            self.s3.create_bucket(**arguments)
            versioning = resource.get("Properties", {}).get("VersioningConfiguration", {})
            if versioning.get("Status") == "Enabled":
                self.s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})

    def _create_queues(self, stack: SynthesizedStack, resolver: Resolver) -> None:
        queues = stack.resources_of_type("AWS::SQS::Queue")
        ordered = sorted(queues, key=lambda lid: "RedrivePolicy" in queues[lid].get("Properties", {}))
        for logical_id in ordered:
            props = resolver.resolve(queues[logical_id].get("Properties", {}))
            attributes = {}
            if "VisibilityTimeout" in props:
                attributes["VisibilityTimeout"] = str(min(int(props["VisibilityTimeout"]), self.visibility_timeout))
            if "MessageRetentionPeriod" in props:
                attributes["MessageRetentionPeriod"] = str(props["MessageRetentionPeriod"])
            if "RedrivePolicy" in props:
                attributes["RedrivePolicy"] = json.dumps(props["RedrivePolicy"])
            url = self.sqs.create_queue(QueueName=resolver.physical_name(logical_id), Attributes=attributes)["QueueUrl"]
            expected = resolver.ref(logical_id)
            if url != expected:
                raise RuntimeError(f"queue URL {url} differs from the resolved {expected}")

    def _create_topics(self, stack: SynthesizedStack, resolver: Resolver) -> None:
        for logical_id in stack.resources_of_type("AWS::SNS::Topic"):
            self.sns.create_topic(Name=resolver.physical_name(logical_id))

    def _create_tables(self, stack: SynthesizedStack, resolver: Resolver) -> None:
        for logical_id, resource in stack.resources_of_type("AWS::DynamoDB::Table").items():
            props = resolver.resolve(resource.get("Properties", {}))
            name = resolver.physical_name(logical_id)
            self.dynamodb.create_table(
                TableName=name,
                KeySchema=props["KeySchema"],
                AttributeDefinitions=props["AttributeDefinitions"],
                BillingMode="PAY_PER_REQUEST",
            )
            ttl = props.get("TimeToLiveSpecification")
            if ttl and ttl.get("Enabled"):
                self.dynamodb.update_time_to_live(
                    TableName=name, TimeToLiveSpecification={"AttributeName": ttl["AttributeName"], "Enabled": True}
                )

    def _create_parameters(self) -> None:
        for resource in self._of_type("AWS::SSM::Parameter").values():
            props = self.resolver.resolve(resource["Properties"])
            self.ssm.put_parameter(Name=props["Name"], Value=props["Value"], Type=props.get("Type", "String"))

    def _queue_url_of_arn(self, arn: str) -> str:
        return f"{self.endpoint}/{ACCOUNT}/{arn.rsplit(':', 1)[-1]}"

    def _create_functions(self) -> None:
        configs = {}
        for resource in self._of_type("AWS::Lambda::EventInvokeConfig").values():
            props = self.resolver.resolve(resource["Properties"])
            configs[props["FunctionName"]] = props
        for logical_id, resource in self._of_type("AWS::Lambda::Function").items():
            props = resource["Properties"]
            name = self.resolver.physical_name(logical_id)
            code = props.get("Code", {})
            if "ZipFile" in code:
                code_dir = self.log_dir / f"inline-{logical_id}"
                code_dir.mkdir(exist_ok=True)
                (code_dir / "index.py").write_text(self.resolver.resolve(code["ZipFile"]))
            else:
                asset_hash = str(code.get("S3Key", "")).removesuffix(".zip")
                if asset_hash not in self.assets:
                    self.not_emulated[f"AWS::Lambda::Function ({logical_id}: code not a local asset)"] += 1
                    continue
                code_dir = self.assets[asset_hash]
            variables = self.resolver.resolve(props.get("Environment", {}).get("Variables", {}))
            config = configs.get(name, {})
            failure_arn = config.get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
            self.functions[self.resolver.get_att(logical_id, "Arn")] = LocalFunction(
                name=name,
                arn=self.resolver.get_att(logical_id, "Arn"),
                code_dir=code_dir,
                handler=props.get("Handler", "index.handler"),
                environment=dict(os.environ)
                | self._override(variables)
                | self.base_environment(self._key(props.get("Role"))),
                timeout=int(props.get("Timeout", 3)),
                retry_attempts=int(config.get("MaximumRetryAttempts", 2)),
                on_failure=self._failure_sender(failure_arn) if failure_arn else None,
                log_dir=self.log_dir,
            )

    def _failure_sender(self, arn: str):
        def send(record: dict[str, Any]) -> None:
            self.deliver(arn, record)

        return send

    def _create_batch(self) -> None:
        definitions: dict[str, JobDefinitionSpec] = {}
        for logical_id, resource in self._of_type("AWS::Batch::JobDefinition").items():
            props = self.resolver.resolve(resource["Properties"])
            container = props.get("ContainerProperties", {})
            image = str(container.get("Image", ""))
            image_dir = self.assets.get(image.rsplit(":", 1)[-1])
            requirements = {r["Type"]: r["Value"] for r in container.get("ResourceRequirements", [])}
            retry = props.get("RetryStrategy", {})
            arn = self.resolver.ref(logical_id)
            definitions[arn] = JobDefinitionSpec(
                arn=arn,
                name=self.resolver.physical_name(logical_id),
                environment=self._override({e["Name"]: str(e["Value"]) for e in container.get("Environment", [])})
                # The job's role, as the ECS credentials endpoint would give it to the container.
                | {
                    "AWS_ACCESS_KEY_ID": self._key(
                        resource["Properties"].get("ContainerProperties", {}).get("JobRoleArn")
                    )
                },
                image_dir=image_dir,
                command=container.get("Command"),
                vcpus=int(float(requirements.get("VCPU", container.get("Vcpus", 1)))),
                attempts=int(retry.get("Attempts", 1)),
                evaluate_on_exit=retry.get("EvaluateOnExit", []),
                timeout_seconds=props.get("Timeout", {}).get("AttemptDurationSeconds"),
            )
        queues = {self.resolver.ref(lid) for lid in self._of_type("AWS::Batch::JobQueue")}
        if definitions or queues:
            self.batch = LocalBatch(
                definitions,
                queues,
                base_environment={},
                emit=lambda event: self.bus.put(event) if self.bus else None,
                log_dir=self.log_dir,
                region=self.region,
                fail_steps=self.faults.fail_steps,
            )
            self.batch.base_environment = self.base_environment()

    def _create_subscriptions(self) -> None:
        for resource in self._of_type("AWS::SNS::Subscription").values():
            props = self.resolver.resolve(resource["Properties"])
            protocol, topic, endpoint = props["Protocol"], props["TopicArn"], props.get("Endpoint", "")
            if protocol == "sqs":
                attributes = {"RawMessageDelivery": str(props.get("RawMessageDelivery", False)).lower()}
                self.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=endpoint, Attributes=attributes)
            elif protocol == "lambda" and endpoint in self.functions:
                tap_name = f"local-sns-tap-{uuid.uuid4().hex[:8]}"
                tap_url = self.sqs.create_queue(QueueName=tap_name)["QueueUrl"]
                tap_arn = self.sqs.get_queue_attributes(QueueUrl=tap_url, AttributeNames=["QueueArn"])["Attributes"][
                    "QueueArn"
                ]
                subscription = self.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=tap_arn)["SubscriptionArn"]
                self.sns_taps.append((tap_url, self.functions[endpoint], subscription))
            else:
                self.not_emulated[f"AWS::SNS::Subscription ({protocol})"] += 1

    def _targets(self, raw_targets: list[dict[str, Any]]) -> list[Target]:
        targets = []
        for raw in raw_targets:
            raw = self.resolver.resolve(raw)
            targets.append(
                Target(arn=raw["Arn"], input=raw.get("Input"), input_transformer=raw.get("InputTransformer"))
            )
        return targets

    def _create_rules_and_schedules(self) -> None:
        for logical_id, resource in self._of_type("AWS::Events::Rule").items():
            props = resource["Properties"]
            targets = self._targets(props.get("Targets", []))
            if props.get("ScheduleExpression"):
                for target in targets:
                    self.schedules.append(
                        Schedule(logical_id, self._path(logical_id), props["ScheduleExpression"], "UTC", target, "rule")
                    )
            elif props.get("EventPattern"):
                pattern = self.resolver.resolve(props["EventPattern"])
                self.rules.append(LocalRule(self._path(logical_id), pattern, None, targets))
        for logical_id, resource in self._of_type("AWS::Scheduler::Schedule").items():
            props = self.resolver.resolve(resource["Properties"])
            self.schedules.append(
                Schedule(
                    logical_id,
                    self._path(logical_id),
                    props["ScheduleExpression"],
                    props.get("ScheduleExpressionTimezone", "UTC"),
                    Target(arn=props["Target"]["Arn"]),
                    "scheduler",
                    input_text=props["Target"].get("Input"),
                )
            )
        self.bus = LocalEventBus(self.rules, self.deliver)

    def _create_fleets(self) -> None:
        templates = self._of_type("AWS::EC2::LaunchTemplate")
        for logical_id, resource in self._of_type("AWS::AutoScaling::AutoScalingGroup").items():
            props = resource["Properties"]
            spec = props.get("MixedInstancesPolicy", {}).get("LaunchTemplate", {}).get(
                "LaunchTemplateSpecification"
            ) or props.get("LaunchTemplate", {})
            template_id = spec.get("LaunchTemplateId", {}).get("Ref")
            user_data = (
                templates.get(template_id, {}).get("Properties", {}).get("LaunchTemplateData", {}).get("UserData")
            )
            if user_data is None:
                self.not_emulated[f"AWS::AutoScaling::AutoScalingGroup ({logical_id}: no user data)"] += 1
                continue
            try:
                environment, downloads = parse_user_data(self.resolver.decode_user_data(user_data))
            except ValueError:
                self.not_emulated[f"AWS::AutoScaling::AutoScalingGroup ({logical_id}: not a worker fleet)"] += 1
                continue
            if "task" not in downloads or "runtime" not in downloads:
                self.not_emulated[f"AWS::AutoScaling::AutoScalingGroup ({logical_id}: container delivery)"] += 1
                continue
            launch_data = templates.get(template_id, {}).get("Properties", {}).get("LaunchTemplateData", {})
            profile = launch_data.get("IamInstanceProfile", {}).get("Arn")
            access_key = self.iam.key_for_instance_profile(profile) if self.iam is not None else ADMIN_KEY
            environment = (
                self._override(environment)
                | self.base_environment(access_key)
                | {
                    # Time compression for a laptop: short polls and flushes, the shortened visibility timeout.
                    "PIPELINE_WAIT_SECONDS": "1",
                    "PIPELINE_ACK_DELAY_SECONDS": "1",
                    "PIPELINE_WORKER_HEARTBEAT_SECONDS": "5",
                    "PIPELINE_RETRY_DELAY": "1",
                    "PIPELINE_CONCURRENCY": "2",
                    "PIPELINE_STOP_GRACE_SECONDS": "5",
                    "PIPELINE_VISIBILITY_TIMEOUT": str(
                        min(
                            int(environment.get("PIPELINE_VISIBILITY_TIMEOUT", self.visibility_timeout)),
                            self.visibility_timeout,
                        )
                    ),
                }
            )
            self.fleets[logical_id] = LocalFleet(
                environment.get("PIPELINE_FLEET_NAME", self._path(logical_id)),
                environment=environment,
                task_dir=self.assets[downloads["task"]],
                runtime_dir=self.assets[downloads["runtime"]],
                workers=0 if self.from_zero else self.workers_per_fleet,
                group=self.resolver.physical_name(logical_id),
                log_dir=self.log_dir,
                watch_spot=self.faults.spot_notice_after is not None or self.faults.lifecycle_after is not None,
            )
            # The group as producers see it: at zero with from_zero (a SetDesiredCapacity, a wake, starts its
            # workers), else at the run's worker count.
            self.autoscaling.register_group(
                LocalGroup(
                    self.fleets[logical_id].group_name,
                    max_size=max(int(props.get("MaxSize", 1)), self.workers_per_fleet),
                    desired=0 if self.from_zero else self.workers_per_fleet,
                    on_desired=self.fleets[logical_id].set_desired,
                )
            )
        for fleet in self.fleets.values():
            fleet.start()

    # ------------------------------------------------------------------ delivery

    def deliver(self, arn: str, payload: Any) -> None:
        """Send a payload to a target ARN, as EventBridge, Scheduler or a Lambda destination would."""
        if self._stopping.is_set():  # the run is over: job threads still winding down have no one to tell
            return
        if arn.startswith("arn:aws:lambda:"):
            function = self.functions.get(":".join(arn.split(":")[:7]))  # without a version or alias qualifier
            if function is None:
                raise KeyError(f"no local function {arn}")
            function.invoke_async(payload)
        elif arn.startswith("arn:aws:sns:"):
            self.sns.publish(TopicArn=arn, Message=payload if isinstance(payload, str) else json.dumps(payload))
        elif arn.startswith("arn:aws:sqs:"):
            body = payload if isinstance(payload, str) else json.dumps(payload)
            self.sqs.send_message(QueueUrl=self._queue_url_of_arn(arn), MessageBody=body)
        else:
            raise KeyError(f"target {arn} is not emulated locally")

    def _poll_sns_taps(self) -> None:
        """SNS -> Lambda: each lambda subscription is an SQS tap; its notifications become SNS events."""
        while not self._stopping.is_set():
            for tap_url, function, subscription in self.sns_taps:
                messages = self.sqs.receive_message(QueueUrl=tap_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
                for message in messages.get("Messages", []):
                    envelope = json.loads(message["Body"])
                    record = {
                        "EventSource": "aws:sns",
                        "EventVersion": "1.0",
                        "EventSubscriptionArn": subscription,
                        "Sns": {
                            "Type": envelope.get("Type", "Notification"),
                            "MessageId": envelope["MessageId"],
                            "TopicArn": envelope["TopicArn"],
                            "Subject": envelope.get("Subject"),
                            "Message": envelope["Message"],
                            "Timestamp": envelope.get("Timestamp"),
                            "MessageAttributes": envelope.get("MessageAttributes", {}),
                        },
                    }
                    function.invoke_async({"Records": [record]})
                    self.sqs.delete_message(QueueUrl=tap_url, ReceiptHandle=message["ReceiptHandle"])
            self._stopping.wait(0.5)

    # ------------------------------------------------------------------ schedules

    def schedule_names(self) -> list[str]:
        return [s.path for s in self.schedules]

    def fire(self, name: str = "all") -> list[str]:
        """Fire the schedules whose construct path, logical id or last path part is ``name`` (or all)."""
        fired = []
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        for schedule in self.schedules:
            names = {schedule.path, schedule.logical_id, *schedule.path.split("/")}
            # Without path metadata (synth outside the CLI) the logical id still starts with the construct id.
            if name != "all" and name not in names and not schedule.logical_id.startswith(name):
                continue
            self._fire(schedule, now)
            fired.append(schedule.path)
        if not fired:
            raise KeyError(f"no schedule named {name!r}; schedules: {', '.join(self.schedule_names()) or 'none'}")
        return fired

    def run_schedules(self) -> None:
        """Fire every schedule when its cron or rate comes due, until the run stops (checked each minute)."""
        started = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        fired_at: dict[str, dt.datetime] = {}
        while not self._stopping.wait(5):
            minute = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
            for schedule in list(self.schedules):
                if fired_at.get(schedule.logical_id) == minute:
                    continue
                try:
                    is_due = due(schedule.expression, schedule.time_zone, minute, started)
                except UnsupportedSchedule as error:
                    log.warning("schedule %s fires only on demand: %s", schedule.path, error)
                    self.schedules.remove(schedule)
                    continue
                if is_due:
                    fired_at[schedule.logical_id] = minute
                    self._fire(schedule, minute)
                    self.faults.events.append(f"schedule {schedule.path} fired on its schedule at {minute:%H:%M} UTC")

    def _fire(self, schedule: Schedule, now: dt.datetime) -> None:
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        if schedule.kind == "scheduler":
            raw = schedule.input_text or "{}"
            text = raw.replace("<aws.scheduler.scheduled-time>", stamp).replace(
                "<aws.scheduler.execution-id>", str(uuid.uuid4())
            )
            try:
                payload: Any = json.loads(text)
            except ValueError:
                payload = text
        else:
            event = {
                "version": "0",
                "id": str(uuid.uuid4()),
                "detail-type": "Scheduled Event",
                "source": "aws.events",
                "account": ACCOUNT,
                "time": stamp,
                "region": self.region,
                "resources": [],
                "detail": {},
            }
            payload = schedule.target.payload(event)
        schedule.fired += 1
        self.deliver(schedule.target.arn, payload)

    # ------------------------------------------------------------------ sample work

    def first_stage_fleets(self) -> list[LocalFleet]:
        downstream = {f.downstream_queue_url for f in self.fleets.values()}
        return [f for f in self.fleets.values() if f.queue_url not in downstream]

    def submit_sample_tasks(self, count: int) -> None:
        """Upload ``count`` CSV inputs per first-stage fleet and enqueue a task for each (plus the poison)."""
        for fleet in self.first_stage_fleets():
            bucket, prefix = fleet.environment["PIPELINE_BUCKET"], fleet.environment.get("PIPELINE_PREFIX", "")
            keys = []
            for index in range(count):
                key = f"sample-{index:04d}"
                rows = ["id,price,quantity"] + [
                    f"{row},{self.rng.uniform(1, 100):.2f},{self.rng.randint(1, 20)}" for row in range(50)
                ]
                self.s3.put_object(Bucket=bucket, Key=f"{prefix}input/{key}", Body="\n".join(rows).encode())
                keys.append(key)
            keys += [f"poison-{index:02d}" for index in range(self.faults.poison)]  # no input object: they fail
            for start in range(0, len(keys), 10):
                self.sqs.send_message_batch(
                    QueueUrl=fleet.queue_url,
                    Entries=[
                        {"Id": str(i), "MessageBody": json.dumps({"key": k})}
                        for i, k in enumerate(keys[start : start + 10])
                    ],
                )
            self.submitted[fleet.name] = keys
            if self.from_zero and self.wake:
                autoscaling = self.session.client("autoscaling", endpoint_url=self.autoscaling.endpoint)
                wake_group(autoscaling, fleet.group_name)

    # ------------------------------------------------------------------ faults

    def _start_fault_injection(self) -> None:
        if self.faults.kill_worker_every:
            threading.Thread(target=self._kill_workers, name="fault-kill", daemon=True).start()
        if self.faults.spot_notice_after is not None:
            args = (self.faults.spot_notice_after, "spot")
            threading.Thread(target=self._notify, args=args, name="fault-spot", daemon=True).start()
        if self.faults.lifecycle_after is not None:
            args = (self.faults.lifecycle_after, "lifecycle")
            threading.Thread(target=self._notify, args=args, name="fault-lifecycle", daemon=True).start()

    def _kill_workers(self) -> None:
        while not self._stopping.wait(self.faults.kill_worker_every):
            fleets = list(self.fleets.values())
            if fleets:
                victim = self.rng.choice(fleets).kill_one(self.rng)
                if victim:
                    self.faults.events.append(f"killed {victim} (kill -9)")

    def _notify(self, after: float, how: str) -> None:
        """After ``after`` s, a spot notice (``spot``) or termination lifecycle action to one live worker."""
        if self._stopping.wait(after):
            return
        for fleet in self.fleets.values():
            victim = fleet.spot_notice(self.rng) if how == "spot" else fleet.lifecycle_termination(self.rng)
            if victim:
                what = "spot interruption notice to" if how == "spot" else "termination lifecycle action on"
                self.faults.events.append(f"{what} {victim}")
                return

    # ------------------------------------------------------------------ progress

    def queue_depth(self, url: str) -> tuple[int, int]:
        attributes = self.sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
        )["Attributes"]
        return int(attributes["ApproximateNumberOfMessages"]), int(attributes["ApproximateNumberOfMessagesNotVisible"])

    def dead_letter_url(self, queue_url: str) -> str | None:
        attributes = self.sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])["Attributes"]
        if "RedrivePolicy" not in attributes:
            return None
        return self._queue_url_of_arn(json.loads(attributes["RedrivePolicy"])["deadLetterTargetArn"])

    def fleet_progress(self, fleet: LocalFleet) -> dict[str, int]:
        bucket, prefix = fleet.environment["PIPELINE_BUCKET"], fleet.environment.get("PIPELINE_PREFIX", "")
        paginator = self.s3.get_paginator("list_objects_v2")
        done = sum(
            1
            for page in paginator.paginate(Bucket=bucket, Prefix=f"{prefix}output/")
            for entry in page.get("Contents", [])
            if entry["Key"].endswith("/_SUCCESS")
        )
        visible, in_flight = self.queue_depth(fleet.queue_url)
        dlq = self.dead_letter_url(fleet.queue_url)
        dead = sum(self.queue_depth(dlq)) if dlq else 0
        stale = self._done_in_dead_letters(fleet, dlq) if dead else 0
        upstream = [f for f in self.fleets.values() if f.downstream_queue_url == fleet.queue_url]
        if upstream:
            # Done upstream tasks stuck as stale DLQ copies may never have been forwarded: not expected here.
            expected = sum(p["done"] - p["stale_dead"] for p in (self.fleet_progress(f) for f in upstream))
        else:
            expected = len(self.submitted.get(fleet.name, []))
        return {
            "expected": expected,
            "done": done,
            "waiting": visible,
            "in_flight": in_flight,
            "dead": dead - stale,
            "stale_dead": stale,
        }

    def status_rows(self, fleet: LocalFleet) -> Counter[str]:
        """The fleet's task rows in the status store, by state (what `pipeline status` reports)."""
        table = fleet.environment.get("PIPELINE_TABLE")
        states: Counter[str] = Counter()
        if not table:
            return states
        paginator = self.dynamodb.get_paginator("query")
        pages = paginator.paginate(
            TableName=table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :task)",
            ExpressionAttributeValues={":pk": {"S": f"fleet#{fleet.name}"}, ":task": {"S": "task#"}},
        )
        for page in pages:
            states.update(item.get("state", {}).get("S", "?") for item in page["Items"])
        return states

    def _done_in_dead_letters(self, fleet: LocalFleet, dlq: str) -> int:
        """DLQ messages of tasks that are done (their worker was killed three times before deleting them):
        stale copies, not lost work; a redrive would acknowledge them as duplicates."""
        bucket, prefix = fleet.environment["PIPELINE_BUCKET"], fleet.environment.get("PIPELINE_PREFIX", "")
        messages = self.sqs.receive_message(
            QueueUrl=dlq, MaxNumberOfMessages=10, VisibilityTimeout=0, WaitTimeSeconds=0
        ).get("Messages", [])
        stale = 0
        for message in messages:
            try:
                key = json.loads(message["Body"]).get("key", "")
                self.s3.head_object(Bucket=bucket, Key=f"{prefix}output/{key}/_SUCCESS")
                stale += 1
            except Exception:  # not JSON, or no marker: a real dead letter
                continue
        return stale

    def failure_queue_depths(self) -> dict[str, int]:
        """Depth of every on-failure destination and subscription/target DLQ of the template."""
        arns = set()
        for resource in self._of_type("AWS::Lambda::EventInvokeConfig").values():
            destination = resource["Properties"].get("DestinationConfig", {}).get("OnFailure", {}).get("Destination")
            if destination:
                arns.add(self.resolver.resolve(destination))
        return {arn.rsplit(":", 1)[-1]: sum(self.queue_depth(self._queue_url_of_arn(arn))) for arn in arns}

    def busy(self) -> bool:
        if self.batch is not None and self.batch.busy():
            return True
        if any(function.busy() for function in self.functions.values()):
            return True
        if any(sum(self.queue_depth(url)) for url, _, _ in self.sns_taps):
            return True
        return any(sum(self.queue_depth(fleet.queue_url)) for fleet in self.fleets.values())

    def wait_until_idle(
        self, timeout: float, *, quiet_seconds: float = 1.0, interval: float = 0.5, on_tick=None
    ) -> bool:
        """True once nothing has been busy for ``quiet_seconds`` in a row (three looks): every hand-over is
        busy in some state while it lasts (a message in a tap or fleet queue until deleted, a function until
        it returns, a job until its final event is delivered); False at ``timeout``. A call denied by IAM ends
        the wait at once: the run has failed, and the work it blocked would never finish."""
        deadline = time.monotonic() + timeout
        quiet_since = None
        while time.monotonic() < deadline:
            if on_tick:
                on_tick()
            if self.iam is not None and self.iam.checker.denials:
                return True
            now = time.monotonic()
            if self.busy():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= quiet_seconds:
                return True
            time.sleep(interval)
        return False

    # ------------------------------------------------------------------ result

    def objects_written(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        buckets = [
            resolver.physical_name(logical_id)
            for stack, resolver in [*self.producers, (self.stack, self.resolver)]
            for logical_id in stack.resources_of_type("AWS::S3::Bucket")
        ]
        for bucket in buckets:
            paginator = self.s3.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket):
                for entry in page.get("Contents", []):
                    counts[f"{bucket}/{'/'.join(entry['Key'].split('/')[:2])}/"] += 1
        return dict(counts)

    def result(self) -> dict[str, Any]:
        jobs = []
        if self.batch is not None:
            for job in self.batch.jobs.values():
                if job.parent is None:
                    environment = job.definition.environment | job.environment
                    jobs.append(
                        {
                            "name": job.name,
                            "step": environment.get("PIPELINE_STEP", job.definition.name),
                            "status": job.status,
                            "attempts": len(job.attempts),
                            "reason": job.status_reason,
                        }
                    )
        fleets = {}
        for fleet in self.fleets.values():
            progress = self.fleet_progress(fleet)
            poison = self.faults.poison if fleet in self.first_stage_fleets() else 0
            progress["lost"] = max(
                0,
                progress["expected"]
                - progress["done"]
                - progress["dead"]
                - progress["waiting"]
                - progress["in_flight"],
            )
            progress["unexpected_dead"] = max(0, progress["dead"] - poison)
            rows = self.status_rows(fleet)
            progress["rows_succeeded"], progress["rows_failed"] = rows["SUCCEEDED"], rows["FAILED"]
            progress |= {
                "kills": fleet.kills,
                "restarts": fleet.restarts,
                "spot_notices": fleet.spot_notices,
                "lifecycle_terminations": fleet.lifecycle_terminations,
                "lifecycle_completed": len(self.autoscaling.completed_lifecycle_actions(fleet.group_name)),
                "replacements": fleet.replacements,
            }
            fleets[fleet.name] = progress
        functions = {f.name: f.counts() for f in self.functions.values()}
        failures = self.failure_queue_depths()
        # Downstream queues no fleet consumes (a Batch step drains them): they must end empty, DLQ too.
        fleet_queues = {f.queue_url for f in self.fleets.values()}
        # A call a role would not allow fails the run as AccessDenied would fail it on AWS.
        denied = sorted({str(d) for d in self.iam.checker.denials}) if self.iam is not None else []
        drained = {}
        for url in {f.downstream_queue_url for f in self.fleets.values()} - fleet_queues - {""}:
            dlq = self.dead_letter_url(url)
            drained[url.rsplit("/", 1)[-1]] = sum(self.queue_depth(url)) + (sum(self.queue_depth(dlq)) if dlq else 0)
        ok = (
            all(job["status"] == "SUCCEEDED" for job in jobs)
            and all(
                p["lost"] == 0 and p["unexpected_dead"] == 0 and p["waiting"] == 0 and p["in_flight"] == 0
                for p in fleets.values()
            )
            # The status store tells the truth: a SUCCEEDED row per finished task, a FAILED one per dead letter.
            and all(p["rows_succeeded"] == p["done"] and p["rows_failed"] == p["dead"] for p in fleets.values())
            and all(depth == 0 for depth in failures.values())
            and all(depth == 0 for depth in drained.values())
            and not denied
        )
        return {
            "ok": ok,
            "jobs": jobs,
            "fleets": fleets,
            "functions": functions,
            "failure_queues": failures,
            "downstream_queues": drained,
            "objects": self.objects_written(),
            "injected": self.faults.describe(),
            "fault_events": list(self.faults.events),
            "not_emulated": dict(self.not_emulated),
            "schedules": {s.path: s.fired for s in self.schedules},
            "iam": {
                "checked": self.iam.checker.checked if self.iam is not None else None,
                "allowed_by_role": dict(self.iam.checker.allowed) if self.iam is not None else {},
                "denied": denied,
            },
        }

    def outputs(self) -> dict[str, str]:
        """The stack's outputs as this local run resolves them (what DescribeStacks would return)."""
        return {
            name: str(self.resolver.resolve(output["Value"]))
            for name, output in self.stack.template.get("Outputs", {}).items()
        }

    def write_state(self, path: Path) -> None:
        """Where the CLI's ``--local`` finds this run: endpoints and resolved outputs."""
        state = {
            "stack": self.stack.name,
            "region": self.region,
            "endpoint": self.endpoint,
            "batchEndpoint": self.batch.endpoint if self.batch else None,
            "outputs": self.outputs(),
            "pid": os.getpid(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=2))

    def stop(self) -> None:
        self._stopping.set()
        for fleet in self.fleets.values():
            fleet.stop()
        for function in self.functions.values():
            function.shutdown()
        if self.batch is not None:
            self.batch.close()
        self.autoscaling.close()
        if self.iam is not None:
            self.iam.close()


def sample_feed(record_tag: str, count: int) -> bytes:
    """A gzipped XML feed of ``count`` ``record_tag`` elements, for the demo's local feed server."""
    records = "".join(
        f'<{record_tag} id="{i}"><title>Sample {i}</title><location>Osaka</location></{record_tag}>'
        for i in range(count)
    )
    return gzip.compress(f'<?xml version="1.0" encoding="UTF-8"?><feed>{records}</feed>'.encode())
