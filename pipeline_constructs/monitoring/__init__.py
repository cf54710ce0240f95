"""What tells the on-call that a pipeline is unwell: :class:`.alarms.PipelineAlarms`; what shows how it runs:
:class:`.dashboard.PipelineDashboard`. Synth-time code."""
