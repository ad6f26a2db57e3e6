"""A Hugging Face hub cache laid out as huggingface_hub writes it, holding tiny stand-ins under the
real ids that the recipes and the README name.

`build_hub_cache(root, tokenizer)` writes, for each repository, `<repo_type>s--<org>--<name>/` with
`blobs/<sha256>`, `snapshots/<revision>/<path>` (relative symlinks into `blobs/`) and `refs/main`:
- `Dream-org/Dream-v0-Base-7B`, `Dream-org/Dream-v0-Instruct-7B`: Dream's release layout (its
  config.json keys and `auto_map`, sharded Qwen2-named weights, generation_config.json) and Dream's
  slow tokenizer files (vocab.json, merges.txt, added_tokens.json, special_tokens_map.json and a
  tokenizer_config.json naming `DreamTokenizer` with its `auto_map`). The remote-code files have
  Dream's names (configuration_dream.py, modeling_dream.py, generation_utils.py,
  tokenization_dream.py) and raise when imported, so any path that runs them fails;
- `GSAI-ML/LLaDA-8B-Base`, `GSAI-ML/LLaDA-8B-Instruct`: LLaDA's release layout (OLMo-style config and
  weight names, `auto_map`, remote-code file names);
- `JetLM/SDAR-1.7B-Chat`: SDAR's release layout (its config.json keys: `model_type: sdar`,
  `auto_map`, `block_size: 4`, `mask_token_id`, training flags; Qwen3-named weights with q/k norms)
  and its remote-code file names;
- `Qwen/Qwen2.5-0.5B`: a causal Qwen2 checkpoint;
- datasets `allenai/tulu-3-sft-mixture` (`data/train-00000-of-00001.parquet`; id, messages, source)
  and `HuggingFaceTB/smoltalk` (`data/<config>/{train,test}-00000-of-00001.parquet` for the configs
  `all`, `everyday-conversations`, `smol-magpie-ultra`; messages, source), each with the README.md
  `configs:` header that maps configs to files as on the hub.
The models share the quickstart tokenizer's vocabulary (ChatML template, `<|mask|>`); the data are
sort-digits conversations, so two training steps have something to learn.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import PreTrainedTokenizerBase, Qwen2ForCausalLM

from tests.conftest import QUICKSTART_MODEL, sort_rows, tiny_qwen2_config
from tests.format_fixtures import write_dream_dir, write_llada_dir

DREAM_IDS = ("Dream-org/Dream-v0-Base-7B", "Dream-org/Dream-v0-Instruct-7B")
LLADA_IDS = ("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct")
SDAR_IDS = ("JetLM/SDAR-1.7B-Chat",)
QWEN_IDS = ("Qwen/Qwen2.5-0.5B",)
TULU = "allenai/tulu-3-sft-mixture"
SMOLTALK = "HuggingFaceTB/smoltalk"
SMOLTALK_CONFIGS = ("all", "everyday-conversations", "smol-magpie-ultra")
MODEL_IDS = (*DREAM_IDS, *LLADA_IDS, *SDAR_IDS, *QWEN_IDS)
DATASET_IDS = (TULU, SMOLTALK)

_REFUSE = 'raise ImportError("{name}: remote code must never run in dlm-sft")\n'


def revision_of(repo_id: str) -> str:
    """The (fake, fixed) commit hash of a repository's snapshot."""
    return hashlib.sha1(repo_id.encode()).hexdigest()


def repo_folder(cache: Path, repo_id: str, repo_type: str = "model") -> Path:
    return cache / f"{repo_type}s--{repo_id.replace('/', '--')}"


def publish(cache: Path, repo_id: str, source: Path, repo_type: str = "model") -> Path:
    """Put every file under `source` into the cache as a snapshot of `repo_id`; its snapshot dir."""
    storage = repo_folder(cache, repo_id, repo_type)
    revision = revision_of(repo_id)
    snapshot = storage / "snapshots" / revision
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for file in sorted(p for p in source.rglob("*") if p.is_file()):
        data = file.read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(exist_ok=True)
    (storage / "refs" / "main").write_text(revision)
    return snapshot


# ------------------------------------------------------------------------------------------ models
def write_dream_tokenizer(directory: Path) -> None:
    """Dream's tokenizer files: the slow byte-level BPE layout with `DreamTokenizer` (remote code)."""
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        (directory / name).unlink(missing_ok=True)
    fast = json.loads((QUICKSTART_MODEL / "tokenizer.json").read_text())
    (directory / "vocab.json").write_text(json.dumps(fast["model"]["vocab"]))
    merges = [" ".join(m) if isinstance(m, list) else m for m in fast["model"]["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    added = {token["content"]: token["id"] for token in fast["added_tokens"]}
    (directory / "added_tokens.json").write_text(json.dumps(added, indent=2))
    specials = ["<|im_start|>", "<|im_end|>"]
    (directory / "special_tokens_map.json").write_text(
        json.dumps(
            {
                "additional_special_tokens": specials,
                "eos_token": "<|endoftext|>",
                "mask_token": "<|mask|>",
                "pad_token": "<|endoftext|>",
            },
            indent=2,
        )
    )
    decoder = {
        str(token["id"]): {
            "content": token["content"],
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token in fast["added_tokens"]
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": specials,
        "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
        "bos_token": None,
        "chat_template": (QUICKSTART_MODEL / "chat_template.jinja").read_text(),
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "mask_token": "<|mask|>",
        "model_max_length": 131072,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "DreamTokenizer",
        "unk_token": None,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (directory / "tokenization_dream.py").write_text(_REFUSE.format(name="tokenization_dream.py"))


def write_dream_repo(directory: Path, tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
    write_dream_dir(directory, tokenizer, seed=seed)
    for name in ("configuration_dream.py", "modeling_dream.py", "generation_utils.py"):
        (directory / name).write_text(_REFUSE.format(name=name))
    mask = tokenizer.convert_tokens_to_ids("<|mask|>")
    generation = {
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "mask_token_id": mask,
        "pad_token_id": tokenizer.pad_token_id,
        "transformers_version": "4.46.2",
    }
    (directory / "generation_config.json").write_text(json.dumps(generation, indent=2))
    write_dream_tokenizer(directory)


def write_llada_repo(directory: Path, tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
    write_llada_dir(directory, tokenizer, seed=seed)
    for name in ("configuration_llada.py", "modeling_llada.py"):
        (directory / name).write_text(_REFUSE.format(name=name))


def sdar_config(tokenizer: PreTrainedTokenizerBase) -> dict:
    """config.json as SDAR-1.7B-Chat's (same keys and flags), with tiny dimensions."""
    return {
        "architectures": ["SDARForCausalLM"],
        "auto_map": {
            "AutoConfig": "configuration_sdar.SDARConfig",
            "AutoModel": "modeling_sdar.SDARModel",
            "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
        },
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attn_implementation": "flex_attention",
        "bos_token_id": tokenizer.eos_token_id,
        "debug": False,
        "eos_token_id": tokenizer.eos_token_id,
        "block_size": 4,
        "mask_token_id": tokenizer.convert_tokens_to_ids("<|mask|>"),
        "ep_size": 1,
        "fuse_cross_entropy": True,
        "head_dim": 8,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 64,
        "max_position_embeddings": 128,
        "max_window_layers": 2,
        "micro_forward": False,
        "model_type": "sdar",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "skip_checkpoint": False,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.52.4",
        "use_cache": False,
        "use_deepep": False,
        "use_sliding_window": False,
        "vocab_size": len(tokenizer),
    }


def write_sdar_repo(directory: Path, tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
    """SDAR's layout: its config.json, Qwen3-named weights (written by transformers' own Qwen3 class,
    whose names SDAR's remote `SDARForCausalLM` shares), tokenizer and remote-code file names."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = sdar_config(tokenizer)
    remote = ("architectures", "auto_map", "model_type", "attn_implementation")
    native = {k: v for k, v in config.items() if k not in remote}
    torch.manual_seed(seed)
    Qwen3ForCausalLM(Qwen3Config(**native)).save_pretrained(directory)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    tokenizer.save_pretrained(directory)
    for name in ("configuration_sdar.py", "modeling_sdar.py", "fused_linear_diffusion_cross_entropy.py"):
        (directory / name).write_text(_REFUSE.format(name=name))


def write_qwen_repo(directory: Path, tokenizer: PreTrainedTokenizerBase, seed: int) -> None:
    torch.manual_seed(seed)
    Qwen2ForCausalLM(tiny_qwen2_config(tokenizer, tie_word_embeddings=True)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


# ---------------------------------------------------------------------------------------- datasets
MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])


def _configs_header(configs: dict[str, list[tuple[str, str]]]) -> str:
    lines = ["---", "configs:"]
    for name, splits in configs.items():
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {path}" for split, path in splits]
    return "\n".join(lines) + "\n---\n"


def write_tulu_repo(directory: Path, rows: int = 48) -> None:
    schema = pa.schema([("id", pa.string()), ("messages", pa.list_(MESSAGE)), ("source", pa.string())])
    records = [{**row, "source": "ai2-adapt-dev/sort_digits"} for row in sort_rows(rows, seed=11)]
    (directory / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(records, schema), directory / "data" / "train-00000-of-00001.parquet")
    header = _configs_header({"default": [("train", "data/train-*")]})
    (directory / "README.md").write_text(header + "# Tulu 3 SFT mixture (tiny stand-in)\n")


def write_smoltalk_repo(directory: Path, rows: int = 24) -> None:
    schema = pa.schema([("messages", pa.list_(MESSAGE)), ("source", pa.string())])
    configs = {}
    for index, config in enumerate(SMOLTALK_CONFIGS):
        folder = directory / "data" / config
        folder.mkdir(parents=True)
        for split, seed in (("train", 20 + index), ("test", 40 + index)):
            records = [
                {"messages": row["messages"], "source": config}
                for row in sort_rows(rows // 2 or 1, seed=seed)
            ]
            table = pa.Table.from_pylist(records, schema)
            pq.write_table(table, folder / f"{split}-00000-of-00001.parquet")
        configs[config] = [(split, f"data/{config}/{split}-*") for split in ("train", "test")]
    (directory / "README.md").write_text(_configs_header(configs) + "# SmolTalk (tiny stand-in)\n")


# ------------------------------------------------------------------------------------------- cache
def build_hub_cache(cache: Path, tokenizer: PreTrainedTokenizerBase) -> Path:
    """Write every stand-in repository into the hub cache at `cache`; returns `cache`."""
    writers: dict[tuple[str, str], Callable[[Path], None]] = {}
    for seed, repo_id in enumerate(DREAM_IDS):
        writers[repo_id, "model"] = lambda d, s=seed: write_dream_repo(d, tokenizer, seed=s + 1)
    for seed, repo_id in enumerate(LLADA_IDS):
        writers[repo_id, "model"] = lambda d, s=seed: write_llada_repo(d, tokenizer, seed=s + 3)
    for repo_id in SDAR_IDS:
        writers[repo_id, "model"] = lambda d: write_sdar_repo(d, tokenizer, seed=7)
    for repo_id in QWEN_IDS:
        writers[repo_id, "model"] = lambda d: write_qwen_repo(d, tokenizer, seed=5)
    writers[TULU, "dataset"] = write_tulu_repo
    writers[SMOLTALK, "dataset"] = write_smoltalk_repo
    with tempfile.TemporaryDirectory() as staging:
        for (repo_id, repo_type), write in writers.items():
            source = Path(staging) / repo_id.replace("/", "--")
            source.mkdir(parents=True)
            write(source)
            publish(cache, repo_id, source, repo_type)
            shutil.rmtree(source)
    return cache


def use_hub_cache(patch: pytest.MonkeyPatch, cache: Path, datasets_cache: Path) -> None:
    """Offline (HF_HUB_OFFLINE=1) with HF_HUB_CACHE at `cache`: hub ids resolve only from it, as on a
    machine without network (huggingface_hub reads both at import, so its constants are patched too)."""
    import datasets
    from huggingface_hub import constants

    patch.setenv("HF_HUB_CACHE", str(cache))
    patch.setenv("HF_HUB_OFFLINE", "1")
    patch.setattr(constants, "HF_HUB_CACHE", str(cache))
    patch.setattr(constants, "HF_HUB_OFFLINE", True)
    patch.setattr(datasets.config, "HF_DATASETS_CACHE", datasets_cache)
