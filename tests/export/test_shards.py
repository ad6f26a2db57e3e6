"""Writing size-bounded safetensors shards, read back shard by shard."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from sft.errors import UserError
from sft.export.shards import ShardWriter, parse_size
from sft.families.weights import INDEX_FILE, iter_shards, shard_files


def test_shard_writer_bounds_shards_and_the_index_reads_back(tmp_path):
    tensors = {f"layer.{i}.weight": torch.randn(16, 16) for i in range(10)}  # 1 KiB each
    writer = ShardWriter(tmp_path, max_shard_size=3100)
    for name, tensor in tensors.items():
        writer.add(name, tensor)
    files = writer.finish()
    assert len(files) == 4 and writer.peak_buffered_bytes <= 3100
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert set(index["weight_map"]) == set(tensors) and index["metadata"]["total_size"] == 10 * 1024
    back = {}
    for _, shard in iter_shards(tmp_path):
        back.update(shard)
    assert all(torch.equal(back[n], t) for n, t in tensors.items())


def test_one_small_shard_is_written_as_model_safetensors(tmp_path):
    writer = ShardWriter(tmp_path, max_shard_size="1MB")
    writer.add("a", torch.ones(3))
    assert writer.finish() == ["model.safetensors"]
    save_file({"b": torch.ones(1)}, str(tmp_path / "other.safetensors"))  # stray files are not weights
    assert [p.name for p in shard_files(tmp_path)] == ["model.safetensors"]


def test_sizes_read_as_documented():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("500MB") == 500 * 10**6
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size(1234) == 1234
    with pytest.raises(UserError, match="not a memory size"):
        parse_size("huge")


def test_sizes_take_every_spelling_of_the_huggingface_parsers_and_binary_units():
    """What `save_pretrained(max_shard_size=...)` and huggingface_hub take, plus `GiB` (which their
    parsers refuse, hence ours)."""
    spellings = {"5GB": 5e9, "5gb": 5e9, "5 GB": 5e9, "2.5GB": 2.5e9, "40G": 40e9, "1TB": 1e12, "10MB": 1e7}
    spellings |= {"24GiB": 24 * 1024**3, "512MiB": 512 * 1024**2, "1KiB": 1024}
    assert {text: parse_size(text) for text in spellings} == spellings
