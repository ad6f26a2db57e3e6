"""Build the quickstart's tiny assets: a ChatML byte-level BPE tokenizer and a tiny Qwen2 config.

`python -m sft.tasks.assets recipes/quickstart/model` writes them; the result is committed, and a
test checks that rebuilding gives the same files. The tokenizer has Qwen2.5/Dream's specials
(`<|endoftext|>` = EOS = pad, `<|im_start|>`, `<|im_end|>`, `<|mask|>`), splits digits like Qwen's,
and its vocabulary is learnt from chat-formatted task text.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config

from sft.tasks import sort_digits

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>"]

CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{% generation %}{{- message['content'] + '<|im_end|>' + '\\n' }}{% endgeneration %}"
    "{%- else %}{{- message['content'] + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def build_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    corpus = ["user\n", "assistant\n", "system\n", "You are a helpful assistant."]
    corpus += [r["messages"][0]["content"] for r in sort_digits.make_rows(2000, seed=12345)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>", "<|mask|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )


def build_config(tokenizer: PreTrainedTokenizerFast) -> Qwen2Config:
    vocab = len(tokenizer)
    return Qwen2Config(
        vocab_size=-(-vocab // 64) * 64,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        is_causal=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        mask_token_id=tokenizer.convert_tokens_to_ids("<|mask|>"),
    )


def write_assets(directory: str | Path) -> Path:
    directory = Path(directory)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(directory)
    build_config(tokenizer).save_pretrained(directory)
    # Keep the committed files stable: drop the library version stamp.
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text())
    config.pop("transformers_version", None)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


if __name__ == "__main__":
    print(write_assets(sys.argv[1] if len(sys.argv) > 1 else "recipes/quickstart/model"))
