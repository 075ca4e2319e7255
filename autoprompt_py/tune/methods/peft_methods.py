"""``prompt``, ``ptuning``, ``prefix``, ``lora``: PEFT adapters (prompt tuning, P-tuning,
prefix tuning, LoRA). They need the PEFT library."""

from __future__ import annotations

from autoprompt_py.errors import AutopromptError
from autoprompt_py.export import PEFT_INSTALL


def require_peft(method: str):
    try:
        import peft
    except ImportError:
        raise AutopromptError(
            f"--method {method} needs the PEFT library, which is not installed: {PEFT_INSTALL}"
        ) from None
    return peft


def build(lm, task, config, objective):
    require_peft(config.method)
    # Not built yet: the PEFT adapters could not be developed or tested where PEFT is absent.
    raise AutopromptError(
        f"--method {config.method} is not available in this version; use --method soft, full "
        "or head"
    )
