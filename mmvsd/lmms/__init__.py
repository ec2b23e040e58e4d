"""The lmms-eval model plugin `mmvsd` (registered through the `lmms_eval.models` entry point)."""
