"""Physical names, ARNs and intrinsic functions of a synthesized template, for the local emulator.

Every resource gets a deterministic local name (``<stack>-<logical id>``, shaped to the service's rules) and
the ARN AWS would give it. ``Ref``, ``Fn::GetAtt``, ``Fn::Join``, ``Fn::Sub``, ``Fn::Select``, ``Fn::Split``,
``Fn::Base64`` and ``Fn::GetAZs`` are resolved against those, with the pseudo parameters of a local account.
"""

from __future__ import annotations

import base64
import re
from typing import Any

#: The account of a stack that names none (an environment-agnostic one): moto's default.
DEFAULT_ACCOUNT = "123456789012"
PARTITION = "aws"
URL_SUFFIX = "amazonaws.com"


class UnresolvableError(ValueError):
    """An intrinsic the local run cannot resolve; the message says which and where."""


def _clean(text: str, allowed: str, limit: int, lower: bool = False) -> str:
    text = text.lower() if lower else text
    return re.sub(f"[^{allowed}]", "-", text)[:limit].strip("-")


class Resolver:
    def __init__(
        self,
        template: dict[str, Any],
        *,
        stack_name: str,
        region: str,
        queue_url_base: str,
        run_id: str = "",
        imports: dict[str, Any] | None = None,
        account: str = DEFAULT_ACCOUNT,
    ) -> None:
        """``imports``: the values of other stacks' exports, by export name, for ``Fn::ImportValue``;
        ``account``: the stack's own (``AWS::AccountId`` and every ARN), as on AWS."""
        self.account = account
        self.template = template
        self.imports = imports or {}
        # Names carry the run id, so several runs can share one emulator without colliding.
        self.name_prefix = f"{stack_name}-{run_id}" if run_id else stack_name
        self.resources: dict[str, dict[str, Any]] = template.get("Resources", {})
        self.stack_name = stack_name
        self.region = region
        self.queue_url_base = queue_url_base.rstrip("/")
        self.parameters = {
            name: spec.get("Default", f"local-{name}") for name, spec in template.get("Parameters", {}).items()
        }
        self._names: dict[str, str] = {}

    # ------------------------------------------------------------------ names and ARNs

    def physical_name(self, logical_id: str) -> str:
        if logical_id in self._names:
            return self._names[logical_id]
        resource = self.resources[logical_id]
        kind, props = resource["Type"], resource.get("Properties", {})
        explicit = {
            "AWS::S3::Bucket": "BucketName",
            "AWS::SQS::Queue": "QueueName",
            "AWS::SNS::Topic": "TopicName",
            "AWS::DynamoDB::Table": "TableName",
            "AWS::Lambda::Function": "FunctionName",
            "AWS::Logs::LogGroup": "LogGroupName",
            "AWS::Batch::JobQueue": "JobQueueName",
            "AWS::Batch::JobDefinition": "JobDefinitionName",
            "AWS::Batch::ComputeEnvironment": "ComputeEnvironmentName",
            "AWS::AutoScaling::AutoScalingGroup": "AutoScalingGroupName",
            "AWS::Scheduler::Schedule": "Name",
            "AWS::Events::Rule": "Name",
            "AWS::CloudWatch::Alarm": "AlarmName",
        }.get(kind)
        name = props.get(explicit) if explicit else None
        if isinstance(name, str):
            pass
        elif kind == "AWS::S3::Bucket":
            name = _clean(f"{self.name_prefix}-{logical_id}", "a-z0-9-", 63, lower=True)
        elif kind == "AWS::SQS::Queue":
            name = _clean(f"{self.name_prefix}-{logical_id}", "A-Za-z0-9_-", 80)
            if props.get("FifoQueue"):
                name = f"{name[:75]}.fifo"
        elif kind == "AWS::Logs::LogGroup":
            name = f"/local/{self.name_prefix}/{logical_id}"
        else:
            name = _clean(f"{self.name_prefix}-{logical_id}", "A-Za-z0-9_-", 64)
        self._names[logical_id] = name
        return name

    def arn(self, service: str, resource: str, *, region: bool = True, account: bool = True) -> str:
        return f"arn:{PARTITION}:{service}:{self.region if region else ''}:{self.account if account else ''}:{resource}"

    def ref(self, logical_id: str) -> str:
        if logical_id in self.parameters:
            return str(self.parameters[logical_id])
        pseudo = {
            "AWS::Region": self.region,
            "AWS::AccountId": self.account,
            "AWS::Partition": PARTITION,
            "AWS::URLSuffix": URL_SUFFIX,
            # With the run id, like every name: runs sharing an emulator keep apart what the stack names.
            "AWS::StackName": self.name_prefix,
            "AWS::StackId": self.arn("cloudformation", f"stack/{self.stack_name}/local"),
            "AWS::NoValue": None,
        }
        if logical_id in pseudo:
            return pseudo[logical_id]  # type: ignore[return-value]
        if logical_id not in self.resources:
            raise UnresolvableError(f"Ref to unknown {logical_id!r}")
        kind = self.resources[logical_id]["Type"]
        name = self.physical_name(logical_id)
        if kind == "AWS::SQS::Queue":
            return f"{self.queue_url_base}/{self.account}/{name}"
        if kind == "AWS::SNS::Topic":
            return self.arn("sns", name)
        if kind == "AWS::Batch::JobQueue":
            return self.arn("batch", f"job-queue/{name}")
        if kind == "AWS::Batch::JobDefinition":
            return self.arn("batch", f"job-definition/{name}:1")
        if kind == "AWS::Batch::ComputeEnvironment":
            return self.arn("batch", f"compute-environment/{name}")
        return name

    def get_att(self, logical_id: str, attribute: str) -> str:
        if logical_id not in self.resources:
            raise UnresolvableError(f"Fn::GetAtt of unknown {logical_id!r}")
        kind = self.resources[logical_id]["Type"]
        name = self.physical_name(logical_id)
        arns = {
            "AWS::S3::Bucket": f"arn:{PARTITION}:s3:::{name}",
            "AWS::SQS::Queue": self.arn("sqs", name),
            "AWS::SNS::Topic": self.arn("sns", name),
            "AWS::DynamoDB::Table": self.arn("dynamodb", f"table/{name}"),
            "AWS::Lambda::Function": self.arn("lambda", f"function:{name}"),
            "AWS::IAM::Role": self.arn("iam", f"role/{name}", region=False),
            "AWS::Logs::LogGroup": self.arn("logs", f"log-group:{name}:*"),
            "AWS::Batch::JobQueue": self.arn("batch", f"job-queue/{name}"),
            "AWS::Batch::ComputeEnvironment": self.arn("batch", f"compute-environment/{name}"),
            "AWS::Events::Rule": self.arn("events", f"rule/{name}"),
            "AWS::Scheduler::Schedule": self.arn("scheduler", f"schedule/default/{name}"),
            "AWS::KMS::Key": self.arn("kms", f"key/{name}"),
            "AWS::CloudWatch::Alarm": self.arn("cloudwatch", f"alarm:{name}"),
        }
        if attribute in ("Arn", "TopicArn", "JobQueueArn", "ComputeEnvironmentArn", "QueueArn") and kind in arns:
            return arns[kind]
        if attribute in ("QueueName", "TopicName", "BucketName"):
            return name
        if attribute == "QueueUrl":
            return self.ref(logical_id)
        if attribute in ("DomainName", "RegionalDomainName"):
            return f"{name}.s3.{self.region}.{URL_SUFFIX}"
        return f"{name}.{attribute}"

    # ------------------------------------------------------------------ intrinsics

    def resolve(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, argument),) = value.items()
            if key == "Ref":
                return self.ref(argument)
            if key == "Fn::GetAtt":
                logical_id, attribute = argument if isinstance(argument, list) else argument.split(".", 1)
                return self.get_att(logical_id, attribute)
            if key == "Fn::Join":
                separator, parts = argument
                return separator.join(str(self.resolve(p)) for p in self.resolve(parts))
            if key == "Fn::Sub":
                return self._sub(argument)
            if key == "Fn::Select":
                index, items = argument
                return self.resolve(items)[int(self.resolve(index))]
            if key == "Fn::Split":
                separator, text = argument
                return str(self.resolve(text)).split(separator)
            if key == "Fn::Base64":
                return base64.b64encode(str(self.resolve(argument)).encode()).decode()
            if key == "Fn::ImportValue":
                name = self.resolve(argument)
                if name not in self.imports:
                    raise UnresolvableError(
                        f"Fn::ImportValue {name!r}: no stack in the run exports it "
                        f"(exports: {', '.join(sorted(self.imports)) or 'none'})"
                    )
                return self.imports[name]
            if key == "Fn::GetAZs":
                return [f"{self.region}{zone}" for zone in "abc"]
            if key.startswith("Fn::") or key == "Condition":
                raise UnresolvableError(f"{key} is not supported by the local run")
        return {k: self.resolve(v) for k, v in value.items()}

    def exports(self) -> dict[str, Any]:
        """This stack's exports (``Outputs.*.Export.Name``) and their values."""
        return {
            self.resolve(output["Export"]["Name"]): self.resolve(output["Value"])
            for output in self.template.get("Outputs", {}).values()
            if "Export" in output
        }

    def _sub(self, argument: Any) -> str:
        text, variables = (argument, {}) if isinstance(argument, str) else (argument[0], argument[1])
        resolved_variables = {k: self.resolve(v) for k, v in variables.items()}

        def substitute(match: re.Match[str]) -> str:
            name = match.group(1)
            if name.startswith("!"):
                return "${" + name[1:] + "}"
            if name in resolved_variables:
                return str(resolved_variables[name])
            if "." in name:
                logical_id, attribute = name.split(".", 1)
                return self.get_att(logical_id, attribute)
            return str(self.ref(name))

        return re.sub(r"\$\{([^}]+)\}", substitute, text)

    def decode_user_data(self, value: Any) -> str:
        """User data is ``Fn::Base64`` of a script; this gives the script back."""
        return base64.b64decode(self.resolve(value)).decode()
