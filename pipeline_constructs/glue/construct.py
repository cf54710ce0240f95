"""GlueFunction: the one glue Lambda of a stack, shared by every BatchChain link and ScheduledTrigger."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import Aws, Duration, Fn, Stack
from aws_cdk import aws_batch as batch
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as scheduler_targets
from aws_cdk import aws_sqs as sqs
from aws_cdk import aws_ssm as ssm
from constructs import Construct, IConstruct, IValidation

from pipeline_constructs.building_blocks.compliance import compliance_profile, grant_data_key_use
from pipeline_constructs.building_blocks.logs import pipeline_log_group
from pipeline_constructs.building_blocks.nag import (
    SUBMIT_JOB_RESOURCES,
    acknowledge,
    acknowledge_checkov,
    acknowledge_control,
    acknowledge_parliament,
    acknowledge_wildcard_resources,
)
from pipeline_constructs.building_blocks.network import PipelineNetwork
from pipeline_constructs.building_blocks.task_queue import QueueDestination, failure_queue
from pipeline_constructs.building_blocks.validation import argument_error, stack_singleton

#: The handler module alone is the function's code (this folder also holds the construct, which the function
#: does not need).
GLUE_CODE_DIR = Path(__file__).resolve().parent
GLUE_CODE_FILES = ["*", "!handler.py"]
SINGLETON_ID = "Glue"
#: Lambda's limit on all environment variables of a function together.
ENVIRONMENT_LIMIT_BYTES = 4096
#: The first level of the Parameter Store path of every stack's glue configuration.
PARAMETER_ROOT = "pipeline-constructs"
#: Parameter Store's limit on a parameter's value (an advanced one; a standard one, which is free, holds 4 KB):
#: each chain's configuration is one parameter, in the intelligent tier (standard unless it needs more).
PARAMETER_LIMIT_BYTES = 8192


#: IAM's limit on a customer managed policy (whitespace aside), and on how many attach to one role by default.
MANAGED_POLICY_LIMIT_BYTES = 6144
MANAGED_POLICIES_PER_ROLE = 10
#: The chains' grants start a new managed policy past this estimate.
CHAIN_POLICY_BUDGET_BYTES = 5400
#: A reference to another stack's resource (a nested stack's) becomes one of its outputs only when synthesis
#: wires it, at a longer length: its statements count this much more (measured: 15%; the final size is checked).
OTHER_STACK_ALLOWANCE = 1.25

#: What the execution role of a function in a VPC must allow (Lambda checks it when the function is created).
VPC_ACCESS_ACTIONS = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DescribeSubnets",
    "ec2:DeleteNetworkInterface",
    "ec2:AssignPrivateIpAddresses",
    "ec2:UnassignPrivateIpAddresses",
)


class GlueFunction(Construct):
    """The stack's glue Lambda (see :mod:`pipeline_constructs.glue.handler` for what it does).

    Use :meth:`of` rather than the constructor: every chain and trigger in a stack shares one function.
    Async invocations are retried twice, then land in ``failure_queue`` (also the DLQ of the SNS
    subscriptions, schedules and rules that invoke it).

    Each chain's configuration is a Parameter Store parameter under :attr:`chains_path`
    (``/pipeline-constructs/<stack name>/glue``; in the intelligent tier: a standard one, which is free, unless
    a chain of more than about 15 steps takes it over 4 KB, then an advanced one at $0.05 a month, up to 8 KB),
    which the function reads with one ``GetParametersByPath`` per ten chains: its environment stays a few
    hundred bytes however many chains the stack has (Lambda refuses more than 4 KB). The environment carries
    a digest of all chains' configuration, so a change replaces the function's execution environments; an
    environment also reads the parameters again after a minute (a replaced job definition's new ARN) and at
    once for a chain it does not know (one a deploy added: CloudFormation may write its parameter after the
    function, which in a nested stack's chain cannot depend on it).

    Its permissions on the chains' resources (SubmitJob, status writes, claim checks) are customer managed
    policies beside its role, :attr:`chain_policies`, packed to IAM's 6,144 characters a policy; synth fails in
    one line past that, or past the 10 managed policies a role takes (about 55 three-step chains).

    :param log_retention: retention of the function's log group. Default: one month (a year under the
        compliance profile).
    :param network: under the compliance profile, the function runs in this network's compute subnets
        (behind its NAT gateways); outside any VPC otherwise, where it needs neither. Default: None;
        required under the compliance profile.
    """

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        log_retention: logs.RetentionDays | None = None,
        network: PipelineNetwork | None = None,
    ):
        super().__init__(scope, construct_id)
        network = _network_under_profile(self, network)
        #: Everything the function is configured with: ``chains`` go to parameters, the rest to its environment.
        self.config: dict[str, Any] = {"chains": {}}
        #: The Parameter Store path holding one parameter per chain (a token: it names the stack).
        path = Fn.join("", [f"{PARAMETER_ROOT}/", Aws.STACK_NAME, "/glue"])
        self.chains_path = f"/{path}"
        self._chains_path_arn = Stack.of(self).format_arn(service="ssm", resource="parameter", resource_name=path)
        self.chain_parameters: dict[str, ssm.StringParameter] = {}
        self._chain_grants = _ChainGrants(self)
        #: What the function may do to the chains' resources (see :meth:`grant_submit`).
        self.chain_policies: list[iam.ManagedPolicy] = self._chain_grants.policies
        #: The table guarding constant-input schedules (submit once); the first chain's or trigger's table.
        self.guard_table: dynamodb.ITable | None = None
        self.failure_queue = failure_queue(self, "Failures")
        self.log_group = pipeline_log_group(self, "Logs", retention=log_retention)
        # An explicit role: the log group is this function's own, so no AWS managed policy is needed.
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
        self.log_group.grant_write(self.role)
        self.function = _glue_lambda(self, network, self._environment())
        self.node.add_validation(_ConfigSizeCheck(self))
        _grant_own_calls(self.role, in_vpc=network is not None)
        _acknowledge_function_design(self.function, in_vpc=network is not None)

    @classmethod
    def of(
        cls,
        scope: Construct,
        *,
        log_retention: logs.RetentionDays | None = None,
        network: PipelineNetwork | None = None,
    ) -> GlueFunction:
        """The stack's glue function, created on first use (with the first caller's arguments)."""
        return stack_singleton(
            scope,
            SINGLETON_ID,
            cls,
            lambda stack, construct_id: cls(stack, construct_id, log_retention=log_retention, network=network),
        )

    def scheduler_target(
        self,
        scope: Construct,
        role_id: str,
        payload: dict[str, Any],
        *,
        retry_attempts: int,
        max_event_age: Duration,
        dead_letter_queue: sqs.IQueue | None = None,
    ) -> tuple[scheduler_targets.LambdaInvoke, iam.Role]:
        """EventBridge Scheduler's invoke of this function with ``payload``, through a role of its own made
        under ``scope`` (as ``role_id``), which only this account's schedules may assume."""
        role = iam.Role(scope, role_id, assumed_by=scheduler_principal(scope))
        target = scheduler_targets.LambdaInvoke(
            self.function,
            input=scheduler.ScheduleTargetInput.from_object(payload),
            role=role,
            dead_letter_queue=dead_letter_queue,
            retry_attempts=retry_attempts,
            max_event_age=max_event_age,
        )
        if dead_letter_queue is not None and dead_letter_queue.encryption_master_key is not None:
            # The CDK's target grants sqs:SendMessage only: without the key, failed invocations under the
            # compliance profile would never reach the dead-letter queue.
            grant_data_key_use(dead_letter_queue.encryption_master_key, role)
        acknowledge_wildcard_resources(
            role,
            [f"{self.function.function_arn}:*"],
            "Invoke of the glue function only; the wildcard stands for its version and alias qualifiers, "
            "which the CDK's Lambda target grants alongside the unqualified ARN.",
        )
        return target, role

    # ------------------------------------------------------------------ configuration

    def register_chain(self, name: str, chain_config: dict[str, Any], *, owner: Construct) -> None:
        """Store ``chain_config`` in the chain's own parameter (``<chains_path>/<name>``)."""
        if name in self.config["chains"]:
            raise argument_error(owner, "chain_name", name, "a name no other chain in this stack uses")
        if not self.config["chains"]:
            # GetParametersByPath is authorized against the path asked for, not the parameters it returns.
            self.role.add_to_principal_policy(
                iam.PolicyStatement(actions=["ssm:GetParametersByPath"], resources=[self._chains_path_arn])
            )
        self.config["chains"][name] = chain_config
        self.chain_parameters[name] = ssm.StringParameter(
            self,
            f"Chain-{name}",
            parameter_name=f"{self.chains_path}/{name}",
            simple_name=False,
            string_value=Stack.of(self).to_json_string(chain_config),
            tier=ssm.ParameterTier.INTELLIGENT_TIERING,
            description=f"pipeline_constructs glue: configuration of chain {name}",
        )
        # No dependency of the function on its parameters: in a nested stack a chain's parameter refers to the
        # nested stack, which refers to the function. The function reads them again instead (see the handler).
        self._update_environment()

    def use_guard_table(self, table: dynamodb.ITable) -> dynamodb.ITable:
        """The table that guards constant-input schedules: the first one offered (later ones share it)."""
        if self.guard_table is None:
            self.guard_table = table
            self.config["table"] = table.table_name
            self._update_environment()
            self.grant_status(table)
        return self.guard_table

    def deployed_config_bytes(self) -> int:
        """The environment's size once deployed: ARNs and names at their real length, not as placeholders."""
        stack = Stack.of(self)
        return len(json.dumps(as_deployed(stack.resolve(self._environment()), stack.stack_name)))

    def deployed_chain_bytes(self) -> dict[str, int]:
        """Each chain's parameter value once deployed (ARNs and names at their real length)."""
        stack = Stack.of(self)
        return {
            name: len(json.dumps(as_deployed(stack.resolve(config), stack.stack_name)))
            for name, config in self.config["chains"].items()
        }

    def _environment(self) -> dict[str, str]:
        stack = Stack.of(self)
        shared = {key: value for key, value in self.config.items() if key != "chains"}
        if self.config["chains"]:
            shared["chainsPath"] = self.chains_path
        digest = hashlib.sha256(json.dumps(stack.resolve(self.config), sort_keys=True).encode()).hexdigest()
        return {
            "GLUE_CONFIG": stack.to_json_string(shared),
            "GLUE_CONFIG_DIGEST": digest[:16],
        }

    def _update_environment(self) -> None:
        for name, value in self._environment().items():
            self.function.add_environment(name, value)

    # ------------------------------------------------------------------ grants on the chains' resources

    def grant_submit(self, job_queue: batch.IJobQueue, job_definitions: list[batch.IJobDefinition]) -> None:
        """SubmitJob on exactly this queue and these definitions (every revision of each)."""
        policy = self.add_to_chain_policy(
            iam.PolicyStatement(
                actions=["batch:SubmitJob"],
                resources=[job_queue.job_queue_arn, *(d.job_definition_arn for d in job_definitions)],
            ),
            owner=job_definitions[0] if job_definitions else job_queue,
        )
        acknowledge_parliament(policy, "RESOURCE_MISMATCH[batch]", SUBMIT_JOB_RESOURCES)

    def grant_status(self, table: dynamodb.ITable) -> None:
        """Trigger guards and run tracking: write and read back single items, and write a fan-out's child rows
        25 a request (BatchWriteItem), nothing else."""
        self.add_to_chain_policy(
            iam.PolicyStatement(
                actions=["dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:BatchWriteItem", "dynamodb:GetItem"],
                resources=[table.table_arn],
            ),
            owner=table,
        )

    def add_to_chain_policy(self, statement: iam.PolicyStatement, *, owner: IConstruct) -> iam.ManagedPolicy:
        """A permission on resources of a chain, in customer managed policies beside the role rather than in
        it: the function waits for its role's policies, and a chain in a nested stack waits for the function,
        so a chain's ARNs in the role's policy would be a cycle. Packed by deployed size (IAM holds 6,144
        characters a managed policy); the stack's first policy holds most stacks' chains. ``owner``: the
        resource the statement names (its stack decides how long a reference to it is deployed)."""
        return self._chain_grants.add(statement, owner=owner)


def scheduler_principal(scope: Construct) -> iam.IPrincipal:
    """EventBridge Scheduler, bound to this account's schedules (confused-deputy prevention), with the CDK's
    own schedule target role's conditions: Scheduler sets the schedule group's ARN as ``aws:SourceArn`` (a
    schedule's own ARN cannot be named: the schedule refers to the role). Our schedules are in the default
    group (no ``schedule_group`` is given to them)."""
    stack = Stack.of(scope)
    group_arn = stack.format_arn(service="scheduler", resource="schedule-group", resource_name="default")
    return iam.ServicePrincipal(
        "scheduler.amazonaws.com",
        conditions={"StringEquals": {"aws:SourceAccount": stack.account, "aws:SourceArn": group_arn}},
    )


def _network_under_profile(scope: Construct, network: PipelineNetwork | None) -> PipelineNetwork | None:
    """The network the function runs in: ``network`` under the compliance profile (required), else none."""
    if not compliance_profile(scope):
        return None
    if network is None:
        raise argument_error(
            scope,
            "network",
            None,
            "a PipelineNetwork under the compliance profile (the function runs in a VPC): give the stack's "
            "first BatchChain (or wake_check fleet) a network, or call GlueFunction.of(stack, network=...) first",
        )
    return network


def _glue_lambda(glue: GlueFunction, network: PipelineNetwork | None, environment: dict[str, str]) -> lambda_.Function:
    """The function itself: the handler module on ARM, JSON logs, async failures to ``glue.failure_queue``."""
    return lambda_.Function(
        glue,
        "Function",
        runtime=lambda_.Runtime.PYTHON_3_14,
        architecture=lambda_.Architecture.ARM_64,
        handler="handler.handler",
        code=lambda_.Code.from_asset(str(GLUE_CODE_DIR), exclude=GLUE_CODE_FILES),
        role=glue.role,
        memory_size=256,
        timeout=Duration.seconds(60),
        environment=environment,
        log_group=glue.log_group,
        logging_format=lambda_.LoggingFormat.JSON,
        system_log_level_v2=lambda_.SystemLogLevel.WARN,
        application_log_level_v2=lambda_.ApplicationLogLevel.INFO,
        description="pipeline_constructs glue: submits chained and scheduled AWS Batch jobs",
        retry_attempts=2,
        max_event_age=Duration.hours(6),
        on_failure=QueueDestination(glue.failure_queue),
        dead_letter_queue_enabled=False,
        vpc=network.vpc if network else None,
        vpc_subnets=network.subnet_selection if network else None,
        security_groups=(
            [network.security_group(glue, "SecurityGroup", description="Glue function: no inbound")]
            if network
            else None
        ),
    )


def _grant_own_calls(role: iam.Role, *, in_vpc: bool) -> None:
    """What the function calls that no resource scopes: ListJobs, and in a VPC Lambda's network interfaces."""
    # A delivery that takes over an expired submit guard first looks for the job its holder may have
    # submitted (by its deterministic name); ListJobs has no resource-level permissions.
    role.add_to_principal_policy(iam.PolicyStatement(actions=["batch:ListJobs"], resources=["*"]))
    reason = (
        "batch:ListJobs supports no resource-level permissions (the service authorization reference lists "
        "'*' only); it reads job names and states, and is used only to find a job before a resubmission."
    )
    if in_vpc:
        # What Lambda needs of the execution role to attach the function to the VPC (the actions of the
        # AWS managed AWSLambdaVPCAccessExecutionRole, which a role passed to the function does not get).
        role.add_to_principal_policy(iam.PolicyStatement(actions=list(VPC_ACCESS_ACTIONS), resources=["*"]))
        reason += (
            " The VPC attachment actions are Lambda's own for its network interfaces, whose ids it chooses; "
            "AWS documents them on '*' (AWSLambdaVPCAccessExecutionRole)."
        )
    acknowledge(role, "AwsSolutions-IAM5[Resource::*]", reason)
    if in_vpc:  # the write actions on '*' (checkov), each a service's on '*' (parliament)
        acknowledge_checkov(role.node.find_child("DefaultPolicy"), "CKV_AWS_111", reason)
        acknowledge_parliament(role.node.find_child("DefaultPolicy"), "RESOURCE_STAR[ec2]", reason)


def _acknowledge_function_design(function: lambda_.Function, *, in_vpc: bool) -> None:
    """The rules the function does not follow by design, each with why."""
    acknowledge(
        function,
        "Serverless-LambdaDLQ",
        "Failed async invocations go to an on-failure destination (this construct's failure_queue), which "
        "keeps the request and the error; a DLQ as well would deliver each failure twice.",
        checkov="CKV_AWS_116",
    )
    if not in_vpc:
        acknowledge_control(
            function,
            "lambda_inside_vpc_check",
            "The glue function calls only AWS APIs (Batch, SNS, SQS, DynamoDB, Auto Scaling) and holds no data; "
            "inside a VPC it would need a NAT gateway or five interface endpoints, $33 to $70 a month per AZ.",
            checkov="CKV_AWS_117",
        )
    acknowledge(
        function,
        "Serverless-LambdaTracing",
        "One Batch call per event, and the JSON log lines carry the trigger and job ids; X-Ray would add a "
        "wildcard xray:PutTraceSegments grant for no further insight.",
    )
    acknowledge_checkov(
        function,
        "CKV_AWS_115",
        "A few invocations a minute (job state changes, schedules); reserved concurrency would take capacity "
        "from the account's unreserved pool and throttle a burst of state changes instead of running it.",
    )
    acknowledge_checkov(
        function,
        "CKV_AWS_173",
        "The environment holds names and ARNs of the stack's resources, no secret; Lambda encrypts it at rest "
        "with its AWS managed key.",
    )


class _ChainGrants:
    """The glue's customer managed policies on the chains' resources, each statement added once, packed by
    deployed size: a new policy (``ChainGrants<n>`` under the glue) when the last one is full."""

    def __init__(self, glue: GlueFunction) -> None:
        self._glue = glue
        self.policies: list[iam.ManagedPolicy] = []
        self._policy_bytes: list[int] = []
        self._policy_of: dict[str, iam.ManagedPolicy] = {}

    def add(self, statement: iam.PolicyStatement, *, owner: IConstruct) -> iam.ManagedPolicy:
        """The policy ``statement`` went to (the one holding it already: the same table for every chain)."""
        stack = Stack.of(self._glue)
        resolved = stack.resolve(statement.to_statement_json())
        key = json.dumps(resolved, sort_keys=True)
        if key in self._policy_of:
            return self._policy_of[key]
        size = len(json.dumps(as_deployed(resolved, stack.stack_name), separators=(",", ":"))) + 1
        if Stack.of(owner) is not stack:
            size = int(size * OTHER_STACK_ALLOWANCE)
        if not self.policies or self._policy_bytes[-1] + size > CHAIN_POLICY_BUDGET_BYTES:
            self.policies.append(
                iam.ManagedPolicy(
                    self._glue,
                    f"ChainGrants{len(self.policies) + 1}",
                    description="pipeline_constructs glue: submit and record the jobs of the stack's chains",
                    roles=[self._glue.role],
                )
            )
            self._policy_bytes.append(len('{"Version":"2012-10-17","Statement":[]}'))
        self.policies[-1].add_statements(statement)
        self._policy_bytes[-1] += size
        self._policy_of[key] = self.policies[-1]
        return self.policies[-1]


#: Deploy-time lengths of what a template reference turns into: pseudo parameters at their longest, and a
#: generated name or ARN (``arn:<partition>:<service>:<region>:<account>:<type>/<stack>-<logical id>-<random>``).
PSEUDO_LENGTHS = {"AWS::Region": 14, "AWS::AccountId": 12, "AWS::Partition": 10, "AWS::URLSuffix": 13}
#: The longest ARN prefix among what the glue config names (job queues, job definitions, topics, tables).
ARN_OVERHEAD = len("arn:aws:batch:ap-southeast-2:123456789012:job-definition/")


def as_deployed(value: Any, stack_name: str) -> Any:
    """``value`` (a resolved template fragment) with every reference replaced by a string as long as the name
    or ARN CloudFormation will put there: its size is then the size deployed, not of ``{"Ref": ...}``."""
    if isinstance(value, dict) and len(value) == 1:
        ((key, argument),) = value.items()
        if key == "Ref" and argument in PSEUDO_LENGTHS:
            return "x" * PSEUDO_LENGTHS[argument]
        if key == "Ref" and argument == "AWS::StackName":
            return stack_name
        if key in ("Ref", "Fn::GetAtt"):
            # A nested stack's output (GetAtt ...Outputs.<name>): its name carries the resource's path and logical
            # id, longer than the nested stack's own id.
            nested_output = key == "Fn::GetAtt" and str(argument[1]).startswith("Outputs.")
            name = argument if isinstance(argument, str) else argument[1] if nested_output else argument[0]
            return "x" * (ARN_OVERHEAD + len(stack_name) + len(name) + 14)
        if key == "Fn::ImportValue":  # another stack's export: an ARN or name of that stack's
            return "x" * (ARN_OVERHEAD + len(stack_name) + 40)
        if key == "Fn::Join":
            parts = (as_deployed(part, stack_name) for part in argument[1])
            return argument[0].join(p if isinstance(p, str) else json.dumps(p) for p in parts)
    if isinstance(value, dict):
        return {k: as_deployed(v, stack_name) for k, v in value.items()}
    if isinstance(value, list):
        return [as_deployed(v, stack_name) for v in value]
    return value


@jsii.implements(IValidation)
class _ConfigSizeCheck:
    """Parameter Store refuses a value over 8 KB (and Lambda an environment over 4 KB): say so at synth, with
    the size deployed (ARNs and names at their real length), not at deploy."""

    def __init__(self, glue: GlueFunction) -> None:
        self._glue = glue

    def validate(self) -> list[str]:
        errors = [
            f"{self._glue.chain_parameters[name].node.path}: chain {name}'s glue configuration would be about "
            f"{size} bytes deployed; allowed: at most {PARAMETER_LIMIT_BYTES} (Parameter Store's limit): "
            "fewer steps or shorter link environments, or split the chain"
            for name, size in self._glue.deployed_chain_bytes().items()
            if size > PARAMETER_LIMIT_BYTES
        ]
        size = self._glue.deployed_config_bytes()
        if size > ENVIRONMENT_LIMIT_BYTES - 256:
            errors.append(
                f"{self._glue.node.path}: the glue environment would be about {size} bytes deployed; allowed: "
                f"at most {ENVIRONMENT_LIMIT_BYTES - 256} (Lambda's 4 KB environment limit)"
            )
        stack = Stack.of(self._glue)
        for policy in self._glue.chain_policies:
            document = stack.resolve(policy.document)
            size = len(json.dumps(as_deployed(document, stack.stack_name), separators=(",", ":")))
            if size > MANAGED_POLICY_LIMIT_BYTES:
                errors.append(
                    f"{policy.node.path}: the glue's grants on the chains would be about {size} bytes deployed; "
                    f"allowed: at most {MANAGED_POLICY_LIMIT_BYTES} (IAM's limit on a managed policy)"
                )
        if len(self._glue.chain_policies) > MANAGED_POLICIES_PER_ROLE:
            errors.append(
                f"{self._glue.node.path}: the glue's grants on {len(self._glue.config['chains'])} chains need "
                f"{len(self._glue.chain_policies)} managed policies; allowed: {MANAGED_POLICIES_PER_ROLE} a role "
                "(IAM's default quota): fewer chains in this stack"
            )
        return errors
