"""What tells the on-call that a pipeline is unwell: :class:`.alarms.PipelineAlarms`. Synth-time code."""
