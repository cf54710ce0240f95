"""ScheduledTrigger: a cron or rate schedule that starts a chain, submits a Batch job or enqueues a fleet task
(:mod:`.construct`). Synth-time code; the schedule's target at run time is the glue function or the queue.
"""
