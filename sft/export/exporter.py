"""`dlm-sft export`: writes what `sft.export.sources` resolved as a standalone instruct checkpoint.

The output is written in one of three layouts:
- `native`: transformers' own classes (`is_causal: false`, `dlm_family`, `mask_token_id`), the class
  its family exports that model type as (`Family.export_classes`);
- a family's release layout, e.g. `dream`: Dream's config (`model_type: Dream`, `architectures`,
  `auto_map`, `mask_token_id`) and Qwen2 weight names; `llada`: LLaDA's OLMo-style config and
  `model.transformer.` weight names.
`auto` is the base model's own layout. Weights stream shard by shard (`sft.families.weights`): each base
tensor is renamed, has its LoRA delta added (`sft.export.adapters`), is cast and written, so memory holds
about one input shard and one output shard. The output also gets the tokenizer with its chat
template, remote-code files of the base when the layout needs them, `generation_config.json` with
diffusion defaults and a model card.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import HfApi
from transformers import AutoConfig

from sft.errors import UserError
from sft.export.adapters import LoraMerger
from sft.export.shards import ShardWriter
from sft.export.sources import LAYOUTS, Layout, Source, layout_of, resolve_source
from sft.families import FAMILIES
from sft.families.base import FAMILY_KEY, load_tokenizer_dir, read_config
from sft.families.loader import detect_family, mask_token_from_vocabulary, native_config
from sft.families.weights import iter_shards, tensor_names
from sft.training import model_card
from sft.validation import first_line

FORMATS = ("auto", *LAYOUTS)
DTYPES = {
    "auto": None,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)
DIFFUSION_GENERATION = {"steps": 512, "alg": "entropy", "alg_temp": 0.0, "eps": 1e-3}
"""Dream-style sampler defaults written to generation_config.json (keys of Dream's generation config).
Temperature 0 (greedy) is every sampler's default and is left out: transformers flags a temperature
without sampling as an invalid generation flag."""


@dataclass
class ExportResult:
    output: Path
    format: Layout
    dtype: str
    adapter: Path | None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peak_buffered_bytes: int = 0  # most output bytes held before a shard was written


def export_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """transformers' config (as a dict) for a config.json in any family's layout, naming the causal-LM
    class its family exports that model type as (`Family.export_classes`)."""
    values = native_config(config, source)
    family = detect_family(values, source)
    model_type = values.get("model_type")
    if model_type not in family.export_classes:
        raise UserError(
            f"model_type {model_type!r} cannot be exported",
            file=source,
            expected=f"a {family.name} model of type {' or '.join(family.export_classes) or '(none)'}",
        )
    values["architectures"] = [family.export_classes[model_type]]
    values["is_causal"] = False
    return values


def to_native_name(name: str, layout: Layout) -> str:
    return name if layout == "native" else FAMILIES[layout].native_name(name)


def to_layout_name(name: str, layout: Layout) -> str:
    return name if layout == "native" else FAMILIES[layout].release_name(name)


def export_checkpoint(
    path: str | Path,
    output: str | Path,
    *,
    fmt: str = "auto",
    adapter: str | None = None,
    dtype: str = "auto",
    max_shard_size: str | int = "5GB",
    repo_id: str | None = None,
) -> ExportResult:
    """Export `path` (training output, model, adapter, or a directory of adapters) to `output`;
    `repo_id` is the hub repository it will be pushed to (what its model card names)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}", key="--format", expected=" or ".join(FORMATS))
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}", key="--dtype", expected="auto, bf16 or fp32")
    source = resolve_source(path, adapter)
    target: Layout = source.default_format() if fmt == "auto" else fmt
    out = Path(output)
    if out.resolve() in {d.resolve() for d in (source.model_dir, *source.run_dirs)}:
        raise UserError("the output directory is the source directory", file=str(out), key="--output")
    native = export_config(source.config, str(source.model_dir / "config.json"))
    _check_target(native, target)
    merger = LoraMerger.load(source.adapter_dir) if source.adapter_dir else None
    if merger is not None:
        _check_adapter_fits(merger, source)
    out.mkdir(parents=True, exist_ok=True)
    result = ExportResult(out, target, dtype, source.adapter_dir)

    written_dtype, vocab_rows, result.peak_buffered_bytes = _write_weights(
        source, merger, target, DTYPES[dtype], out, max_shard_size
    )
    native["dtype"] = str(written_dtype).removeprefix("torch.")
    if vocab_rows is not None:
        native["vocab_size"] = vocab_rows
    tokenizer_dir = _copy_tokenizer(source, out, result)
    tokenizer = load_tokenizer_dir(str(tokenizer_dir))
    native["mask_token_id"] = _mask_token_id(native, tokenizer, out)
    eos = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    _write_config(native, target, source, out, result)
    _write_generation_config(native, tokenizer, eos, out)
    facts = model_card.CardFacts(
        title=repo_id or out.name,
        family=str(native[FAMILY_KEY]),
        base_model=source.base_name(),
        run=source.run,
        merged_adapter=source.adapter_dir is not None,
        export_format=target,
        dtype=native["dtype"],
        location=repo_id or str(output),
    )
    model_card.write(out, facts)
    result.files = sorted(p.name for p in out.iterdir())
    for note in result.notes:
        warnings.warn(note, stacklevel=2)
    return result


def _check_target(native: dict[str, Any], target: Layout) -> None:
    needs = None if target == "native" else FAMILIES[target].release_model_type
    if needs and native["model_type"] != needs:
        raise UserError(
            f"a {native['model_type']} model cannot be written in {target}'s layout",
            key="--format",
            expected=f"{needs} weights for {target}, or --format native",
        )


def _check_adapter_fits(merger: LoraMerger, source: Source) -> None:
    """Every LoRA module and saved weight of the adapter must exist in the base (a wrong base otherwise)."""
    names = {to_native_name(n, source.layout) for n in tensor_names(source.model_dir)}
    modules = {n.rpartition(".")[0] for n in names}
    missing = sorted(
        {m for m in merger.pairs if m not in modules} | {n for n in merger.replacements if n not in names}
    )
    if missing:
        raise UserError(
            f"the adapter targets weights the base lacks: {', '.join(missing[:3])}",
            file=str(source.adapter_dir),
            expected=f"an adapter trained on {source.model_dir}",
        )


def _write_weights(
    source: Source,
    merger: LoraMerger | None,
    target: Layout,
    dtype: torch.dtype | None,
    out: Path,
    max_shard_size: str | int,
) -> tuple[torch.dtype, int | None, int]:
    """Stream, merge, rename, cast and write every tensor: (float dtype written, vocab rows, peak bytes)."""
    for stale in out.glob("*.safetensors"):
        stale.unlink()
    writer = ShardWriter(out, max_shard_size)
    written: torch.dtype | None = None
    vocab_rows = None
    for _, tensors in iter_shards(source.model_dir):
        for name in list(tensors):
            tensor = tensors.pop(name)
            native = to_native_name(name, source.layout)
            if merger is not None:
                tensor = merger.merge(native, tensor)
            if tensor.is_floating_point():
                tensor = tensor.to(dtype) if dtype is not None else tensor
                written = written or tensor.dtype
            if native == "model.embed_tokens.weight":
                vocab_rows = tensor.shape[0]
            writer.add(to_layout_name(native, target), tensor)
            del tensor
    writer.finish()
    if merger is not None and merger.unapplied():
        raise UserError(f"adapter weights left unmerged: {', '.join(merger.unapplied()[:3])}")
    return written or torch.float32, vocab_rows, writer.peak_buffered_bytes


def _copy_tokenizer(source: Source, out: Path, result: ExportResult) -> Path:
    """Copy the tokenizer files (chat template included) of the adapter, model or base directory."""
    candidates = [*source.run_dirs, source.base_dir]
    directory = next(
        (d for d in candidates if d is not None and (d / "tokenizer_config.json").is_file()), None
    )
    if directory is None:
        raise UserError(
            "no tokenizer next to the adapter, the model or its base",
            file=str(source.model_dir),
            expected="tokenizer_config.json and tokenizer files in one of them",
        )
    for name in TOKENIZER_FILES:
        if (directory / name).is_file():
            shutil.copy2(directory / name, out / name)
    for code in directory.glob("tokenization_*.py"):
        shutil.copy2(code, out / code.name)
    config = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    if not (
        config.get("chat_template")
        or (out / "chat_template.jinja").is_file()
        or (out / "chat_template.json").is_file()
    ):
        result.notes.append(f"the tokenizer in {directory} has no chat template")
    return directory


def _mask_token_id(native: dict[str, Any], tokenizer: Any, out: Path) -> int:
    if native.get("mask_token_id") is not None:
        return int(native["mask_token_id"])
    found = mask_token_from_vocabulary(tokenizer)
    if found is None:
        raise UserError("no mask token id in the config and no mask token in the tokenizer", file=str(out))
    return found


def _write_config(
    native: dict[str, Any], target: Layout, source: Source, out: Path, result: ExportResult
) -> None:
    template_dir = source.base_dir if source.base_dir is not None and target != "native" else None
    template = read_config(str(template_dir)) if template_dir is not None else None
    if template is not None and layout_of(template) != target:
        template, template_dir = None, None
    if target == "native":
        values = {k: v for k, v in native.items() if k not in ("dtype", "model_type")}
        config = AutoConfig.for_model(native["model_type"], **values)
        config.dtype = native["dtype"]
        config.save_pretrained(out)
        return
    config = FAMILIES[target].release_config(native, template)
    config.pop(FAMILY_KEY, None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    code = sorted(template_dir.glob("*.py")) if template_dir is not None else []
    for path in code:
        shutil.copy2(path, out / path.name)
    if not code:
        result.notes.append(
            f"the base has no remote-code files; {target}'s config.json names them in auto_map "
            "(copy them from the original release to load with trust_remote_code)"
        )


def _write_generation_config(native: dict[str, Any], tokenizer: Any, eos: int | None, out: Path) -> None:
    config: dict[str, Any] = {**DIFFUSION_GENERATION, "max_new_tokens": 512}
    family = FAMILIES.get(str(native[FAMILY_KEY]))
    config.update(family.generation_defaults if family is not None else {})
    config.update(
        mask_token_id=native["mask_token_id"],
        eos_token_id=tokenizer.eos_token_id if tokenizer.eos_token_id is not None else eos,
        pad_token_id=eos,
        bos_token_id=tokenizer.bos_token_id,
    )
    config = {k: v for k, v in config.items() if v is not None}
    import transformers

    config["transformers_version"] = transformers.__version__
    (out / "generation_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def push_to_hub(output: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload an export directory to the hub repository `repo_id` (created when missing); the commit URL."""
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(output), repo_id=repo_id, commit_message="Upload checkpoint exported by dlm-sft"
        )
    except Exception as err:  # noqa: BLE001 - HTTP, network, auth or offline: one line for the user
        raise UserError(
            f"cannot push to {repo_id!r}: {first_line(err)}",
            key="--push-to-hub",
            expected="a hub repo id you may write to (HF_TOKEN or `hf auth login`), with network",
        ) from None
    return str(commit.commit_url)
