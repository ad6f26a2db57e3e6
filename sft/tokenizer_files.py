"""Load a tokenizer directory (or hub id) without running code shipped with it.

Dream's tokenizer_config.json names a `DreamTokenizer` (remote code) that is Qwen2's byte-level BPE,
so it is read with transformers' own `Qwen2Tokenizer`; everything else goes through `AutoTokenizer`
with `trust_remote_code` off unless the caller opts in (a model directory whose config.json has an
`auto_map` would otherwise make transformers ask interactively).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def load_tokenizer_dir(name_or_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer_config = Path(name_or_path) / "tokenizer_config.json"
    if tokenizer_config.is_file():
        declared = json.loads(tokenizer_config.read_text(encoding="utf-8")).get("tokenizer_class")
        if declared == "DreamTokenizer":
            from transformers import Qwen2Tokenizer

            return Qwen2Tokenizer.from_pretrained(str(name_or_path))
    return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
