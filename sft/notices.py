"""Third-party notices that tell a dlm-sft user nothing, kept off the terminal.

DeepSpeed, when installed, is imported by accelerate whenever a model is unwrapped or saved
(`accelerate.utils.extract_model_from_parallel`), in runs that never use DeepSpeed too; on a machine
without CUDA its import logs "Setting accelerator to CPU. If you have GPU or other accelerator, we
were unable to detect it." once per process. DeepSpeed's logger does not propagate, but a filter set
on it before the import stays, so that one record is dropped and every other DeepSpeed message kept.
"""

from __future__ import annotations

import logging

DEEPSPEED_CPU_NOTICE = "Setting accelerator to CPU."


def _not_the_cpu_notice(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(DEEPSPEED_CPU_NOTICE)


def quiet_deepspeed_cpu_notice() -> None:
    """Drop DeepSpeed's CPU-accelerator notice (idempotent; call before DeepSpeed is imported)."""
    logging.getLogger("DeepSpeed").addFilter(_not_the_cpu_notice)
