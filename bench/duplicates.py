"""Identical deliveries of every trigger kind at the same moment: how many Batch jobs do they submit?

The race itself (the chain's world, the barrier, one session a thread) is the tests' too:
:mod:`tests.support.glue_world`.

    python -m bench.duplicates [--deliveries 20]
"""

from __future__ import annotations

import argparse
import json

import boto3

from tests.support.glue_world import KINDS, GlueWorld, deliver_at_once


def measure(deliveries: int = 20) -> dict[str, dict[str, int]]:
    """Per trigger kind: deliveries, jobs submitted, deliveries that failed (all in a fresh world)."""
    figures = {}
    for kind in KINDS:
        world = GlueWorld(boto3.session.Session())
        deliver, name = world.trigger(kind)
        results = deliver_at_once(deliveries, deliver)
        figures[kind] = {
            "deliveries": deliveries,
            "jobs": len(world.jobs_named(name)),
            "errors": sum(1 for r in results if isinstance(r, Exception)),
        }
    return figures


def main() -> None:
    from bench.emulator import moto_endpoint

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deliveries", type=int, default=20)
    args = parser.parse_args()
    with moto_endpoint():
        print(json.dumps(measure(args.deliveries), indent=2))


if __name__ == "__main__":
    main()
