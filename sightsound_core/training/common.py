"""Setup shared by SFT and GRPO: LoRA on the language model, merged exports, checkpoints."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sightsound_core.config import LoraConfig
from sightsound_core.training.inputs import lora_target_regex

log = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def apply_lora(model: Any, lora: LoraConfig | None) -> Any:
    """Wrap ``model`` with LoRA adapters on the language model; None keeps every weight trainable."""
    if lora is None:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_regex(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, peft_config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    log.info("LoRA r=%d on the language model: %d trainable parameters", lora.r, trainable)
    return model


def save_merged(model: Any, processor: Any, out_dir: str | Path) -> str:
    """Write a full model (adapters merged in) and its processor, loadable by ``from_pretrained``.

    Written to a temporary folder and renamed, so a reader never sees half a model.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = Path(tempfile.mkdtemp(prefix=".merged-", dir=out_dir.parent))
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)
    return str(out_dir)


def last_checkpoint(output_dir: str | Path) -> Path | None:
    """The ``checkpoint-N`` folder with the highest N, or None."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return max(found)[1] if found else None
