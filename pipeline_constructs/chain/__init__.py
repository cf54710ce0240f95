"""BatchChain: AWS Batch jobs on spot compute, each step started by the one before it.

The construct (:mod:`.construct`) with its steps and job definitions (:mod:`.steps`), their job roles
(:mod:`.permissions`), its links (:mod:`.links`) and its compute (:mod:`.compute`). What submits the next job
at run time is the stack's glue function (:mod:`pipeline_constructs.glue`). Synth-time code.
"""
