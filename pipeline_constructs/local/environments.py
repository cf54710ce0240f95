"""The environment of the local run's processes (functions, jobs, workers): where they reach the emulator and
the local endpoints, with whose credentials, and the run's ``--set-env`` overrides."""

from __future__ import annotations

from typing import Any

from pipeline_constructs.local.iam import ADMIN_KEY, IamGate


class ProcessEnvironments:
    """Builds each local process's environment. With the IAM check on (``iam``), every endpoint a process
    is given is the check's proxy in front of it, and its access key names its role, so each of its calls is
    held against that role's policies."""

    def __init__(
        self,
        *,
        endpoint: str,
        region: str,
        autoscaling_endpoint: str,
        iam: IamGate | None,
        overrides: dict[str, str],
    ) -> None:
        self.endpoint = endpoint
        self.region = region
        self.autoscaling_endpoint = autoscaling_endpoint
        self.iam = iam
        self.overrides = overrides
        #: The local Batch endpoint, once the template has job definitions to run there.
        self.batch_endpoint: str | None = None

    def base(self, access_key: str = ADMIN_KEY) -> dict[str, str]:
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
        if self.batch_endpoint is not None:
            environment["AWS_ENDPOINT_URL_BATCH"] = self._front(self.batch_endpoint)
        environment["AWS_ENDPOINT_URL_AUTO_SCALING"] = self._front(self.autoscaling_endpoint)
        return environment

    def override(self, environment: dict[str, str]) -> dict[str, str]:
        """``--set-env NAME=VALUE`` replaces a variable wherever the template sets it."""
        return {k: self.overrides.get(k, v) for k, v in environment.items()}

    def key_for_role(self, role_reference: Any) -> str:
        """The access key of a process whose role is ``role_reference`` (``{"Fn::GetAtt": [id, "Arn"]}``)."""
        return self.iam.key_for(role_reference) if self.iam is not None else ADMIN_KEY

    def key_for_instance_profile(self, profile_reference: Any) -> str:
        """The access key of a worker launched with this instance profile."""
        return self.iam.key_for_instance_profile(profile_reference) if self.iam is not None else ADMIN_KEY

    def _front(self, endpoint: str) -> str:
        return self.iam.front(endpoint) if self.iam is not None else endpoint
