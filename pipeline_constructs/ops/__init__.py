"""The operator's tools, run on a laptop or in CI against a deployed or local pipeline: the ``pipeline`` CLI
(:mod:`.cli`), what it does (:mod:`.operator`), the idle-cost report (:mod:`.cost`), the stack summary
(:mod:`.summary`) and the reading of a synthesized cloud assembly (:mod:`.assembly`). No AWS CDK needed.
"""
