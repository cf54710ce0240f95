"""The stack's one glue function: the construct (:mod:`.construct`, synth time) and its handler
(:mod:`.handler`, stdlib + boto3, run by Lambda). It submits the next job of a chain, the jobs of schedules,
records every job state in the status store and wakes fleets.

This package imports nothing itself, so the handler imports without the AWS CDK.
"""
