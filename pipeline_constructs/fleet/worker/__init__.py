"""The worker runtime of SpotWorkerFleet: stdlib + boto3 only, configured by ``PIPELINE_*`` variables.

Run it as ``python -m pipeline_constructs.fleet.worker`` (on instances the bundle ships it as ``pipeline_worker``).
See :mod:`.config` for the variables and :mod:`.task` for the task function's interface.
"""
