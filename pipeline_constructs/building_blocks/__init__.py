"""The shared building blocks every pattern is made of, each with secure and cheap defaults.

:class:`.data_bucket.DataBucket`, :class:`.task_queue.TaskQueue`, :func:`.topic.secure_topic`,
:class:`.status_store.StatusStore`, :class:`.network.PipelineNetwork`, :func:`.logs.pipeline_log_group`, the
compliance profile and its key (:mod:`.compliance`), the stack's manifest (:mod:`.manifest`), and the helpers
every construct uses: argument checks (:mod:`.validation`) and rule-pack acknowledgments (:mod:`.nag`).
Synth-time code: these modules import the AWS CDK.
"""
