"""A SpotWorkerFleet's arguments: their defaults, and the checks they pass before anything is made."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from aws_cdk import Duration, Token
from aws_cdk import aws_sqs as sqs

from pipeline_constructs.building_blocks.validation import (
    argument_error,
    check_duration,
    check_instance_types,
    check_is_duration,
    check_not_empty,
    check_range,
    check_unique,
    check_visibility_covers,
    seconds,
)
from pipeline_constructs.fleet.worker.config import SPARE_DELIVERIES

if TYPE_CHECKING:
    from pipeline_constructs.fleet.construct import SpotWorkerFleet

#: Several current-generation families of one size, so spot capacity is found in more pools.
#: Nitro types that encrypt traffic between instances (the Control Tower control CT.AUTOSCALING.PR.11), in
#: several families so spot capacity is deep.
DEFAULT_X86_INSTANCE_TYPES = ("m7i.large", "m6i.large", "m6a.large", "m7a.large", "c7i.large", "c6i.large", "c6a.large")
DEFAULT_ARM_INSTANCE_TYPES = ("m7g.large", "m7gd.large", "c7g.large", "c6gn.large", "r7g.large")
#: The longest one attempt of a task may take, unless ``task_timeout`` says otherwise.
DEFAULT_TASK_TIMEOUT = Duration.minutes(15)


def is_graviton(instance_type: str) -> bool:
    """m7g.large, c6gn.xlarge, t4g.small, a1.medium: an arm64 (Graviton) instance type."""
    family = instance_type.split(".")[0]
    return family == "a1" or re.match(r"^[a-z]+\d+g", family) is not None


def instance_types_or_default(instance_types: Sequence[str] | None, architecture: str) -> list[str]:
    """The given instance types, else the default ones of the architecture."""
    if instance_types is not None:
        return list(instance_types)
    return list(DEFAULT_ARM_INSTANCE_TYPES if architecture == "arm64" else DEFAULT_X86_INSTANCE_TYPES)


def timeouts_or_default(
    fleet: SpotWorkerFleet, task_timeout: Duration | None, visibility_timeout: Duration | None
) -> tuple[Duration, Duration | None]:
    """``task_timeout`` (default 15 minutes) and ``visibility_timeout`` (default a minute more), both checked
    to be Durations. The visibility timeout stays None when the task timeout is known only at deploy time."""
    check_is_duration(fleet, "task_timeout", task_timeout)
    check_is_duration(fleet, "visibility_timeout", visibility_timeout)
    task_timeout = task_timeout or DEFAULT_TASK_TIMEOUT
    task_seconds = seconds(task_timeout)
    if visibility_timeout is None and task_seconds is not None:
        visibility_timeout = Duration.seconds(task_seconds + 60)
    return task_timeout, visibility_timeout


def prefix_or_default(construct_id: str, prefix: str | None) -> str:
    """The fleet's key prefix, ending in ``/`` unless empty; by default the construct id in lower case."""
    prefix = prefix if prefix is not None else f"{construct_id.lower()}/"
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def check_options(
    fleet: SpotWorkerFleet, queue: sqs.IQueue | None, dead_letter_queue: sqs.IQueue | None, *, visibility_given: bool
) -> None:
    """Raise on the first of the fleet's options (its attributes, defaults resolved) that is out of range or
    contradicts another; ``queue`` and ``dead_letter_queue`` are the arguments, None unless passed."""
    _check_instance_types(fleet)
    _check_capacity(fleet)
    check_range(fleet, "concurrency", fleet.concurrency, minimum=1, maximum=1024)
    check_range(fleet, "root_volume_size", fleet.root_volume_size, minimum=8, maximum=16384, unit=" GiB")
    check_range(fleet, "max_receive_count", fleet.max_receive_count, minimum=1, maximum=1000 - SPARE_DELIVERIES)
    task_timeout = fleet.task_timeout
    check_duration(fleet, "task_timeout", task_timeout, minimum=Duration.seconds(1), maximum=Duration.hours(12))
    check_visibility_covers(fleet, fleet.visibility_timeout, "task_timeout", task_timeout)
    if dead_letter_queue is not None and queue is None:
        raise argument_error(fleet, "dead_letter_queue", dead_letter_queue.node.path, "only together with queue")
    if queue is not None and visibility_given:
        raise argument_error(
            fleet,
            "visibility_timeout",
            f"{seconds(fleet.visibility_timeout):g} seconds",
            "only with a created queue (queue=None)",
        )


def _check_instance_types(fleet: SpotWorkerFleet) -> None:
    architecture = fleet.architecture
    if architecture not in ("x86_64", "arm64"):
        raise argument_error(fleet, "architecture", architecture, "x86_64, arm64")
    check_not_empty(fleet, "instance_types", fleet.instance_types)
    check_unique(fleet, "instance_types", fleet.instance_types)
    check_instance_types(fleet, "instance_types", fleet.instance_types)
    # An AMI of one architecture does not boot on the other's instances: the group would never launch.
    wrong = [name for name in fleet.instance_types if is_graviton(name) != (architecture == "arm64")]
    if wrong:
        kind = "Graviton (arm64)" if architecture == "arm64" else "x86_64"
        raise argument_error(fleet, "instance_types", wrong, f"{kind} types for architecture={architecture}")


def _check_capacity(fleet: SpotWorkerFleet) -> None:
    min_size, max_size = fleet.min_size, fleet.max_size
    check_range(fleet, "max_size", max_size, minimum=1, maximum=1000)
    check_range(fleet, "min_size", min_size, minimum=0)
    if not Token.is_unresolved(min_size) and not Token.is_unresolved(max_size) and max_size < min_size:
        raise argument_error(fleet, "max_size", max_size, f"at least min_size ({min_size}) up to 1000")
    check_range(fleet, "on_demand_base_capacity", fleet.on_demand_base_capacity, minimum=0, maximum=max_size)
    check_range(fleet, "on_demand_percentage_above_base", fleet.on_demand_percentage_above_base, minimum=0, maximum=100)
    check_range(fleet, "tasks_per_worker", fleet.tasks_per_worker, minimum=1, maximum=100000)


#: The Python the bundle delivery's instances run (Amazon Linux 2023's python3.11), which wheels must fit.
BOOT_PYTHON = (3, 11)
#: What the worker runtime itself needs on the instance, so the lock must hold it.
RUNTIME_REQUIREMENT = "boto3"
LOCK_FILE = "requirements.lock"
WHEELS_DIR = "wheels"
#: How to make the lock and the wheelhouse (the error for a directory without them says it).
LOCK_RECIPE = (
    "{lock} pinning every package the workers install, boto3 for the runtime included, each with --hash "
    "(e.g. `uv pip compile --generate-hashes --python-version 3.11 --python-platform {platform}-manylinux_2_28 "
    "-o {lock} requirements.txt` with boto3>=1.40,<2 in requirements.txt), and {wheels}/ holding their wheels "
    "(`pip download --require-hashes --no-deps --only-binary=:all: --python-version 3.11 --implementation cp "
    "--platform manylinux_2_28_{platform} -d {wheels} -r {lock}`)"
)
_LOCKED = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)")
_HASH = re.compile(r"--hash[= ]sha256:([0-9a-f]{64})")


def check_worker_requirements(fleet: SpotWorkerFleet) -> dict[str, set[str]]:
    """The bundle delivery installs only ``requirements.lock``'s packages, from ``wheels/``, hash-checked, with
    no package index at boot: both must be in the worker directory, every locked package pinned with hashes and
    a wheel of one of its hashes fitting the instances (Python 3.11, the fleet's architecture). Returns the
    locked packages (normalized name -> hashes)."""
    directory = fleet.worker_directory
    platform = "aarch64" if fleet.architecture == "arm64" else "x86_64"
    recipe = LOCK_RECIPE.format(lock=LOCK_FILE, wheels=WHEELS_DIR, platform=platform)
    lock, wheels = directory / LOCK_FILE, directory / WHEELS_DIR
    if not lock.is_file() or not wheels.is_dir():
        raise argument_error(fleet, "worker_directory", str(directory), f"a directory with {recipe}")
    locked = _locked_packages(fleet, lock)
    if RUNTIME_REQUIREMENT not in locked:
        raise argument_error(fleet, "worker_directory", str(lock), f"a lock holding {RUNTIME_REQUIREMENT}: {recipe}")
    hashes_of_wheels = {_sha256(path): path.name for path in sorted(wheels.glob("*.whl"))}
    for name, hashes in sorted(locked.items()):
        matching = [hashes_of_wheels[h] for h in sorted(hashes) if h in hashes_of_wheels]
        if not matching:
            raise argument_error(fleet, "worker_directory", str(wheels), f"a wheel of {name} matching {LOCK_FILE}")
        if not any(_fits(wheel, platform) for wheel in matching):
            allowed = f"a wheel of {name} for CPython 3.11 on {platform} Linux"
            raise argument_error(fleet, "worker_directory", str(wheels / matching[0]), allowed)
    return locked


def _locked_packages(fleet: SpotWorkerFleet, lock: Path) -> dict[str, set[str]]:
    """``name==version --hash=sha256:...`` entries (continued lines joined); anything else is refused."""
    text = re.sub(r"\\\n", " ", lock.read_text())
    locked: dict[str, set[str]] = {}
    for line in text.splitlines():
        line = line.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        match, hashes = _LOCKED.match(line), set(_HASH.findall(line))
        if match is None or not hashes:
            allowed = "pinned requirements (name==version), each with --hash=sha256:..., nothing else"
            raise argument_error(fleet, "worker_directory", f"{lock}: {line[:80]}", allowed)
        locked[_normalized(match.group(1))] = hashes
    return locked


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _sha256(path: Path) -> str:
    with path.open("rb") as wheel:
        return hashlib.file_digest(wheel, "sha256").hexdigest()


def _fits(wheel: str, platform: str) -> bool:
    """A wheel file name's tags fit CPython 3.11 on Linux of ``platform``: pure Python, or built for it."""
    python_tags, abi_tags, platform_tags = (tags.split(".") for tags in wheel.removesuffix(".whl").split("-")[-3:])
    major, minor = BOOT_PYTHON
    exact = {f"py{major}", f"py{major}{minor}", f"cp{major}{minor}"}
    stable = [t for t in python_tags if t.startswith(f"cp{major}") and t[3:].isdigit() and int(t[3:]) <= minor]
    python_fits = bool(exact & set(python_tags)) or ("abi3" in abi_tags and bool(stable))
    platform_fits = any(t == "any" or (t.endswith(f"_{platform}") and "linux" in t) for t in platform_tags)
    return python_fits and platform_fits
