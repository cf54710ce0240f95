"""LocalPipeline: a synthesized stack brought up on an embedded moto server, with its compute run locally.

Nothing here knows the example app: every queue, function, job, schedule and fleet comes from the template
and the cloud assembly's asset manifest. The parts: :mod:`.provisioning` (the data resources),
:mod:`.compute` (functions, jobs, fleets), :mod:`.triggers` (subscriptions, rules, schedules, delivery),
:mod:`.faults`, :mod:`.progress` and :mod:`.report`.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline_constructs.glue.handler import wake_group
from pipeline_constructs.local.alarms import FiredAlarm, fire_alarms
from pipeline_constructs.local.batch import LocalBatch
from pipeline_constructs.local.clients import EmulatorClients
from pipeline_constructs.local.compute import LocalCompute
from pipeline_constructs.local.faults import FaultInjector, Faults
from pipeline_constructs.local.fleets import LocalFleet
from pipeline_constructs.local.iam import IamGate
from pipeline_constructs.local.lambdas import LocalFunction
from pipeline_constructs.local.progress import Progress
from pipeline_constructs.local.provisioning import (
    EMULATED,
    IAM_CHECKED,
    asset_manifest,
    count_not_emulated,
    create_data_resources,
    create_parameters,
    run_account,
    stack_resolvers,
)
from pipeline_constructs.local.proxy import FaultProxy
from pipeline_constructs.local.report import run_result
from pipeline_constructs.local.resolver import DEFAULT_ACCOUNT, Resolver
from pipeline_constructs.local.resource_policies import ResourcePolicies, configured_deliveries
from pipeline_constructs.local.triggers import Schedule, Triggers
from pipeline_constructs.ops.assembly import SynthesizedStack
from pipeline_constructs.ops.operator import task_files

# LocalPipeline, and what this module held before the local run was split (code that imported them from here).
__all__ = ["EMULATED", "IAM_CHECKED", "Faults", "LocalPipeline", "sample_feed"]


#: The header that names the account moto serves a request in (its default is :data:`.DEFAULT_ACCOUNT`).
MOTO_ACCOUNT_HEADER = "x-moto-account-id"


def account_front(endpoint: str, account: str) -> FaultProxy | None:
    """A proxy in front of the emulator at ``endpoint`` that has it serve every request in ``account``, so
    the run's own calls, its processes' and ``--local`` CLI calls all land in the stack's account; None for
    the emulator's default account."""
    return None if account == DEFAULT_ACCOUNT else FaultProxy(endpoint, upstream_headers={MOTO_ACCOUNT_HEADER: account})


def _policy_gates(stack: SynthesizedStack, resolver: Resolver, region: str) -> tuple[IamGate, ResourcePolicies]:
    """What holds every call of a function, job or worker against its role's policies in the template, and
    every delivery by an AWS service against the target's resource and key policies."""
    iam = IamGate(stack.template, resolver, region)
    return iam, ResourcePolicies(stack.template, resolver, iam.checker.policies)


class LocalPipeline:
    """A synthesized stack run locally: :meth:`start` brings it up, :meth:`submit_sample_tasks` and
    :meth:`fire` give it work, :meth:`wait_until_idle` waits for it, :meth:`result` judges it."""

    #: Each alarm :meth:`fire_alarms` set to ALARM, and what became of its notifications.
    fired_alarms: Sequence[FiredAlarm] = ()

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
        # from_zero: every fleet's group starts at zero workers, as a deployed one does after a quiet night;
        # wake: the sample tasks' submission wakes it, as `pipeline submit` does.
        self.from_zero, self.wake = from_zero, wake
        self.workers_per_fleet, self.visibility_timeout = workers_per_fleet, visibility_timeout
        self.faults, self.rng = faults or Faults(), random.Random(seed)
        self.run_id = uuid.uuid4().hex[:6]
        self.front = account_front(endpoint, run_account(stack, producers))
        endpoint = self.front.endpoint if self.front is not None else endpoint
        self.stacks = stack_resolvers(stack, producers, region=region, endpoint=endpoint, run_id=self.run_id)
        self.stack, self.resolver = self.stacks[-1]  # after those of the stacks it imports from
        self.clients = EmulatorClients(endpoint, region)
        self.iam: IamGate | None = None
        self.policies: ResourcePolicies | None = None
        if iam_check:
            self.iam, self.policies = _policy_gates(self.stack, self.resolver, region)
        self.not_emulated = count_not_emulated(stack, iam_check=iam_check)
        self.compute = LocalCompute(
            stack,
            self.resolver,
            endpoint=endpoint,
            region=region,
            assets=asset_manifest(assembly_dir, stack.name),
            iam=self.iam,
            env_overrides=env_overrides or {},
            log_dir=log_dir,
            not_emulated=self.not_emulated,
        )
        self._stopping = threading.Event()
        self.triggers = Triggers(
            stack,
            self.resolver,
            self.clients,
            self.compute.functions,
            not_emulated=self.not_emulated,
            stopping=self._stopping,
            record_event=self.faults.events.append,
            policies=self.policies,
        )
        self.progress = Progress(self.clients, self.compute, self.triggers, iam=self.iam)
        log_dir.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ the parts, as callers know them

    @property
    def sqs(self) -> Any:
        """The emulator's SQS client, as the local run itself (not checked by IAM)."""
        return self.clients.sqs

    @property
    def batch(self) -> LocalBatch | None:
        return self.compute.batch

    @property
    def functions(self) -> dict[str, LocalFunction]:
        return self.compute.functions

    @property
    def fleets(self) -> dict[str, LocalFleet]:
        return self.compute.fleets

    @property
    def schedules(self) -> list[Schedule]:
        return self.triggers.schedules

    # ------------------------------------------------------------------ bring-up and shutdown

    def start(self) -> None:
        # What the stack imports (a bucket from a shared stack) exists before what uses it.
        for stack, resolver in self.stacks:
            create_data_resources(self.clients, stack, resolver, visibility_timeout=self.visibility_timeout)
        create_parameters(self.clients, self.stack, self.resolver)
        self.compute.create_batch(emit=self.triggers.bus.put, fail_steps=self.faults.fail_steps)
        self.compute.create_functions(deliver=self.triggers.deliver)
        self.triggers.create_subscriptions()
        self.triggers.create_rules_and_schedules()
        self.compute.create_fleets(
            workers=self.workers_per_fleet,
            from_zero=self.from_zero,
            visibility_timeout=self.visibility_timeout,
            watch_spot=self.faults.watch_spot,
        )
        self._check_standing_deliveries()
        threading.Thread(target=self.triggers.poll_sns_taps, name="sns-taps", daemon=True).start()
        FaultInjector(self.faults, self.compute.fleets, rng=self.rng, stopping=self._stopping).start()

    def _check_standing_deliveries(self) -> None:
        """The deliveries the emulator or no one performs locally (CloudWatch Logs' and S3 access logging's use
        of a key or bucket, SNS to an SQS subscription): each checked once, at bring-up, as on a deploy."""
        if self.policies is None:
            return
        for delivery in configured_deliveries(self.stack, self.resolver):
            service = delivery.sender.service
            to_queue = service == "sns.amazonaws.com" and delivery.target.split(":")[2] == "sqs"
            if service.startswith(("logs.", "logging.s3.")) or to_queue:
                self.policies.check(delivery.sender, delivery.target)

    def fire_alarms(self) -> Sequence[FiredAlarm]:
        """Set every alarm to ALARM once, kept for the result; see :func:`.fire_alarms`."""
        self.fired_alarms = fire_alarms(self.triggers)
        return self.fired_alarms

    def stop(self) -> None:
        self._stopping.set()
        self.compute.stop()
        if self.iam is not None:
            self.iam.close()
        if self.front is not None:
            self.front.close()

    # ------------------------------------------------------------------ work

    def first_stage_fleets(self) -> list[LocalFleet]:
        return self.compute.first_stage_fleets()

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
                self.clients.s3.put_object(Bucket=bucket, Key=f"{prefix}input/{key}", Body="\n".join(rows).encode())
                keys.append(key)
            keys += [f"poison-{index:02d}" for index in range(self.faults.poison)]  # no input object: they fail
            self._enqueue(fleet, keys)

    def submit_inputs(self, paths: Sequence[str | Path], fleet_name: str | None = None) -> int:
        """Upload the user's files (folders walked) under the input prefix of the fleet named ``fleet_name``
        (else of every first-stage fleet) and enqueue a task each, named as `pipeline submit` names them;
        the number of files."""
        files = task_files(paths)
        fleets = self.first_stage_fleets()
        if fleet_name is not None:
            fleets = [f for f in self.fleets.values() if fleet_name.lower() in (f.name.lower(), f.short_name.lower())]
            if not fleets:
                raise KeyError(
                    f"no fleet named {fleet_name!r}; fleets: {', '.join(f.short_name for f in self.fleets.values())}"
                )
        for fleet in fleets:
            bucket, prefix = fleet.environment["PIPELINE_BUCKET"], fleet.environment.get("PIPELINE_PREFIX", "")
            for key, path in files.items():
                self.clients.s3.upload_file(str(path), bucket, f"{prefix}input/{key}")
            self._enqueue(fleet, list(files))
        return len(files)

    def _enqueue(self, fleet: LocalFleet, keys: list[str]) -> None:
        """One task message a key on the fleet's queue, expected to finish; a fleet at zero is woken."""
        for start in range(0, len(keys), 10):
            entries = [
                {"Id": str(i), "MessageBody": json.dumps({"key": k})} for i, k in enumerate(keys[start : start + 10])
            ]
            self.clients.sqs.send_message_batch(QueueUrl=fleet.queue_url, Entries=entries)
        self.progress.submitted[fleet.name] = self.progress.submitted.get(fleet.name, []) + keys
        if self.from_zero and self.wake:
            wake_group(self.clients.client("autoscaling", self.compute.autoscaling.endpoint), fleet.group_name)

    def schedule_names(self) -> list[str]:
        return self.triggers.schedule_names()

    def fire(self, name: str = "all") -> list[str]:
        """Fire the schedules whose construct path, logical id or last path part is ``name`` (or all)."""
        return self.triggers.fire(name)

    def run_schedules(self) -> None:
        """Fire every schedule when its cron or rate comes due, until the run stops."""
        self.triggers.run_schedules()

    # ------------------------------------------------------------------ progress and result

    def fleet_progress(self, fleet: LocalFleet) -> dict[str, int]:
        return self.progress.fleet_progress(fleet)

    def wait_until_idle(
        self,
        timeout: float,
        *,
        quiet_seconds: float = 1.0,
        interval: float = 0.5,
        on_tick: Callable[[], object] | None = None,
    ) -> bool:
        """See :meth:`.Progress.wait_until_idle`."""
        return self.progress.wait_until_idle(timeout, quiet_seconds=quiet_seconds, interval=interval, on_tick=on_tick)

    def result(self) -> dict[str, Any]:
        """See :func:`.report.run_result`; ``reasons``: why what failed failed (:meth:`.Progress.reasons`);
        ``notes``: what failed without failing the run (:meth:`.Progress.notes`)."""
        chain_rows = self.progress.chain_run_rows()
        return run_result(self, chain_rows) | {
            "reasons": self.progress.reasons(chain_rows),
            "notes": self.progress.notes(chain_rows),
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
            "region": self.clients.region,
            "endpoint": self.clients.endpoint,
            "batchEndpoint": self.batch.endpoint if self.batch else None,
            # Where a wake (`pipeline submit --local`) reaches the fleets' groups: the run's own Auto Scaling.
            "autoscalingEndpoint": self.compute.autoscaling.endpoint,
            "outputs": self.outputs(),
            "pid": os.getpid(),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(state, indent=2))


def sample_feed(record_tag: str, count: int) -> bytes:
    """A gzipped XML feed of ``count`` ``record_tag`` elements, for the demo's local feed server."""
    records = "".join(
        f'<{record_tag} id="{i}"><title>Sample {i}</title><location>Osaka</location></{record_tag}>'
        for i in range(count)
    )
    return gzip.compress(f'<?xml version="1.0" encoding="UTF-8"?><feed>{records}</feed>'.encode())
