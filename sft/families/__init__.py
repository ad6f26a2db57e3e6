"""Model families: how a checkpoint becomes a bidirectional transformers model with a mask token.

Each family module (`dream`, `llada`, `sdar`, `ar`, `remote`) fills one `Family` (sft/families/base.py) with
its behaviour and formats; this file only registers them. `sft/families/loader.py` picks a family for
a checkpoint and loads it. Adding a family touches this folder only.
"""

from sft.families import ar, dream, llada, remote, sdar
from sft.families.base import Family

FAMILIES: dict[str, Family] = {
    f.name: f for f in (dream.FAMILY, llada.FAMILY, sdar.FAMILY, ar.FAMILY, remote.FAMILY)
}
"""Every family by name, in detection order: `remote` (anything with auto_map) only after the others."""


def known_checkpoints() -> str:
    """The checkpoints the families take, for messages: "Dream, LLaDA, Qwen2 or Llama"."""
    titles = [title for family in FAMILIES.values() for title in family.titles]
    return " or ".join([", ".join(titles[:-1]), titles[-1]] if len(titles) > 1 else titles)
