"""lm-evaluation-harness as a cross-check of a study's adapters (the optional extra ``[lmeval]``).

:mod:`loraplace.lmeval.bridge` scores the base model and every finished run's adapter with
lm-evaluation-harness; ``tasks/`` holds the task YAMLs of loraplace's built-in tasks, which read
local files so that nothing is downloaded.
"""
