"""EC2 instance metadata over IMDSv2: spot interruption notice, lifecycle state, instance id and ASG name."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

TOKEN_TTL_SECONDS = 21600


class InstanceMetadata:
    """A small IMDSv2 client: a session token from ``PUT /latest/api/token``, then token-signed GETs."""

    def __init__(self, endpoint: str, *, timeout: float = 2.0) -> None:
        if not endpoint.startswith(("http://", "https://")):  # urllib would open file: and custom schemes too
            raise ValueError(f"metadata endpoint {endpoint!r}: expected an http:// or https:// URL")
        self.endpoint = endpoint.rstrip("/")
        self.timeout = timeout
        self._token: str | None = None
        self._token_expires = 0.0

    def _fetch_token(self) -> str:
        request = urllib.request.Request(
            f"{self.endpoint}/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": str(TOKEN_TTL_SECONDS)},
        )
        # The endpoint is an http(s) URL (checked in __init__), never file: or a custom scheme.
        with urllib.request.urlopen(request, timeout=self.timeout) as response:  # nosec B310
            token = response.read().decode()
        self._token, self._token_expires = token, time.monotonic() + TOKEN_TTL_SECONDS - 60
        return token

    def get(self, path: str) -> str | None:
        """The text at ``/latest/<path>``, or None when the service answers 404 (not there)."""
        for _ in range(2):
            token = self._token if self._token and time.monotonic() < self._token_expires else self._fetch_token()
            request = urllib.request.Request(
                f"{self.endpoint}/latest/{path}", headers={"X-aws-ec2-metadata-token": token}
            )
            try:
                # An http(s) endpoint, checked in __init__.
                with urllib.request.urlopen(request, timeout=self.timeout) as response:  # nosec B310
                    return response.read().decode()
            except urllib.error.HTTPError as error:
                if error.code == 404:
                    return None
                if error.code == 401:  # token expired or revoked: fetch a new one once
                    self._token = None
                    continue
                raise
        return None

    def available(self) -> bool:
        try:
            self._fetch_token()
        except (OSError, urllib.error.URLError):
            return False
        return True

    def spot_interruption(self) -> dict[str, Any] | None:
        """The pending interruption (``{"action": "terminate", "time": ...}``), or None."""
        text = self.get("meta-data/spot/instance-action")
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return {"action": "unknown", "raw": text}

    def target_lifecycle_state(self) -> str | None:
        """``Terminated`` once the Auto Scaling group began terminating the instance (a lifecycle hook waits)."""
        return self.get("meta-data/autoscaling/target-lifecycle-state")

    def instance_id(self) -> str | None:
        return self.get("meta-data/instance-id")

    def auto_scaling_group(self) -> str | None:
        """The ASG's name from the instance's tags (the launch template enables tags in metadata)."""
        return self.get("meta-data/tags/instance/aws:autoscaling:groupName")
