"""SpotWorkerFleet: the construct (:mod:`.construct`) with its defaults and checks (:mod:`.options`), its
instances (:mod:`.instances`: role, launch template, Auto Scaling group), boot script (:mod:`.boot`), scaling
(:mod:`.scaling`) and permissions (:mod:`.permissions`), and the worker runtime that runs on its instances
(:mod:`.worker`, stdlib + boto3 only).

This package imports nothing itself, so the worker runtime imports without the AWS CDK.
"""
