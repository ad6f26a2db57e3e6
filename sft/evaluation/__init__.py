"""Evaluation: exact match on the bundled tasks, and lm-evaluation-harness's `dlm` model with the
Monte-Carlo ELBO, presets of Dream's and LLaDA's published settings, and results files.

Nothing is imported here: `lm_eval_hook` runs at every interpreter start (see its docstring)."""
