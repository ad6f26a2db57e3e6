"""`dlm-sft export`: a training output or adapter becomes a standalone instruct checkpoint.

The source is a full model directory (a training output, config.json with `dlm_family`), a LoRA
adapter directory (adapter_config.json names the base) or a directory holding several adapters (pick
one with `adapter`); a source or base named by a hub id is read from its cached snapshot (`sft.hub`).
The output is written in one of three layouts:
- `native`: transformers' Qwen2 / Llama classes (`is_causal: false`, `dlm_family`, `mask_token_id`);
- `dream`: Dream's config (`model_type: Dream`, `architectures`, `auto_map`, `mask_token_id`) and Qwen2
  weight names;
- `llada`: LLaDA's OLMo-style config and `model.transformer.` weight names.
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

from sft import hub
from sft.errors import UserError
from sft.export import model_card
from sft.export.adapters import LoraMerger, choose_adapter, read_adapter_config
from sft.export.shards import ShardWriter
from sft.families import FAMILIES
from sft.families.base import FAMILY_KEY, load_tokenizer_dir, read_config
from sft.families.loader import mask_token_from_vocabulary, native_config, release_family
from sft.families.weights import iter_shards, tensor_names
from sft.validation import first_line

Layout = str  # "native" or the name of a family with a release layout
LAYOUTS = ("native", *(name for name, f in FAMILIES.items() if f.is_release_layout is not None))
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
DIFFUSION_GENERATION = {"steps": 512, "alg": "entropy", "alg_temp": 0.0, "temperature": 0.0, "eps": 1e-3}
"""Dream-style sampler defaults written to generation_config.json (keys of Dream's generation config)."""


@dataclass
class Source:
    """Where an export's weights, adapter, tokenizer and run record come from."""

    model_dir: Path  # the weights merged into (a model directory; an adapter's base)
    adapter_dir: Path | None
    config: dict[str, Any]  # model_dir's config.json
    base_dir: Path | None  # the original base model directory, when known (its layout, remote code)

    @property
    def layout(self) -> Layout:
        return layout_of(self.config)

    @property
    def run_dirs(self) -> list[Path]:
        return [d for d in (self.adapter_dir, self.model_dir) if d is not None]


@dataclass
class ExportResult:
    output: Path
    format: Layout
    dtype: str
    adapter: Path | None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    peak_buffered_bytes: int = 0  # most output bytes held before a shard was written


def layout_of(config: dict[str, Any]) -> Layout:
    """The weight/config layout of a config.json: a family's release layout or transformers' own."""
    family = release_family(config)
    return family.name if family is not None else "native"


def resolve_source(path: str | Path, adapter: str | None = None) -> Source:
    """Find the model, adapter and base behind `path` (see the module docstring)."""
    root = hub.model_dir(path)
    if not root.is_dir():
        raise UserError(
            "not a directory", file=str(path), expected="a training output, model or adapter directory"
        )
    adapter_dir = choose_adapter(root, adapter)
    if adapter_dir is None:
        config = read_config(str(root))
        return Source(root, None, config, _recorded_base(root, config))
    if (root / "config.json").is_file() and adapter is not None:
        model_dir = root  # BASE --adapter NAME: merge into the base given
    else:
        base = read_adapter_config(adapter_dir).get("base_model_name_or_path")
        if not base or not hub.model_dir(base).is_dir():
            raise UserError(
                f"the adapter's base model {base!r} is neither a local directory nor a hub id",
                file=str(adapter_dir / "adapter_config.json"),
                key="base_model_name_or_path",
                expected="export BASE_DIR --adapter ADAPTER to name the base",
            )
        model_dir = hub.model_dir(base)
    return Source(model_dir, adapter_dir, read_config(str(model_dir)), model_dir)


def _recorded_base(model_dir: Path, config: dict[str, Any]) -> Path | None:
    """The base model a full fine-tune started from, when the run recorded it (dlm_run.json)."""
    if layout_of(config) != "native":
        return model_dir
    record = model_card.read_run_record(model_dir)
    base = ((record.recipe or {}).get("model") or {}).get("name_or_path")
    if not base:
        return None
    directory = hub.model_dir(base, weights=False)  # a hub id: config, tokenizer and remote code
    return directory if (directory / "config.json").is_file() else None


def default_format(source: Source) -> Layout:
    """The base's own layout; without a known base, that of the family (dream, llada) or native."""
    if source.base_dir is not None:
        return layout_of(read_config(str(source.base_dir)))
    if source.layout != "native":
        return source.layout
    family = source.config.get(FAMILY_KEY)
    return family if family in LAYOUTS else "native"


EXPORTABLE = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM"}
"""transformers model types an export can hold, and their causal-LM class."""


def export_config(config: dict[str, Any], source: str) -> dict[str, Any]:
    """transformers' Qwen2/Qwen3/Llama config (as a dict) for a config.json in any family's layout."""
    values = native_config(config, source)
    if values.get("model_type") not in EXPORTABLE:
        raise UserError(f"model_type {values.get('model_type')!r} cannot be exported", file=source)
    values["architectures"] = [EXPORTABLE[values["model_type"]]]
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
    target: Layout = default_format(source) if fmt == "auto" else fmt  # type: ignore[assignment]
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
    run = model_card.read_run_record(*source.run_dirs)
    facts = model_card.CardFacts(
        title=repo_id or out.name,
        family=str(native[FAMILY_KEY]),
        base_model=_base_name(source, run),
        run=run,
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


def _base_name(source: Source, run: model_card.RunRecord) -> str:
    """The base model as recorded (a hub id stays a hub id; the card never shows a local path)."""
    if source.adapter_dir is not None:
        return str(read_adapter_config(source.adapter_dir).get("base_model_name_or_path") or source.model_dir)
    recorded = ((run.recipe or {}).get("model") or {}).get("name_or_path")
    return str(recorded or source.base_dir or source.config.get("_name_or_path") or source.model_dir)


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
