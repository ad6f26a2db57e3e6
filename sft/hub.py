"""Hub ids → local files, through huggingface_hub's cache (as transformers and datasets resolve them).

A model, tokenizer or adapter named by a hub id (`Dream-org/Dream-v0-Instruct-7B`) becomes its
snapshot directory in the hub cache (`HF_HUB_CACHE/models--org--name/snapshots/<rev>/`), downloaded
when missing; everything after that reads a local directory. A dataset id becomes a
`datasets.Dataset`: read from its cached snapshot when there is one, else from the hub with
`datasets.load_dataset(name, config, split=, revision=)`. Local paths are returned unchanged.
Offline (`HF_HUB_OFFLINE=1`) a cached id works and a missing one is a one-line `UserError` naming the
id and the `hf download` line that fetches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from sft.errors import UserError
from sft.validation import first_line, is_hub_id

MODEL_FILES = ("*.json", "*.safetensors", "*.py", "*.txt", "*.model", "*.jinja", "*.tiktoken")
"""What a model snapshot needs: configs, safetensors weights, remote code, tokenizer files (pickle
weights and other frameworks' files are never downloaded)."""
TOKENIZER_FILES = tuple(p for p in MODEL_FILES if p != "*.safetensors")
"""A snapshot without the weights: enough for config.json, the tokenizer and the remote-code files."""


def offline() -> bool:
    """`HF_HUB_OFFLINE`, as huggingface_hub read it: only the cache is consulted."""
    return bool(constants.HF_HUB_OFFLINE)


def fetch_hint(repo_id: str, repo_type: str = "model", revision: str | None = None) -> str:
    """The command that puts `repo_id` into the hub cache (on a machine with network)."""
    kind = " --repo-type dataset" if repo_type == "dataset" else ""
    rev = f" --revision {revision}" if revision else ""
    return f"`hf download {repo_id}{kind}{rev}` (huggingface-cli download) with network, into HF_HUB_CACHE"


def _not_cached(repo_id: str, repo_type: str, revision: str | None, what: str) -> UserError:
    return UserError(
        f"{what} {repo_id!r} is neither a local path nor in the hub cache ({constants.HF_HUB_CACHE}), "
        "and HF_HUB_OFFLINE is set",
        expected=fetch_hint(repo_id, repo_type, revision),
    )


def snapshot(
    repo_id: str,
    *,
    repo_type: str = "model",
    revision: str | None = None,
    patterns: tuple[str, ...] = MODEL_FILES,
) -> Path:
    """The local snapshot directory of a hub repository, downloading the files matching `patterns`
    unless offline (then only the cache is read)."""
    what = "dataset" if repo_type == "dataset" else "model"
    try:
        return Path(
            snapshot_download(
                repo_id,
                repo_type=repo_type,
                revision=revision,
                allow_patterns=list(patterns),
                local_files_only=offline(),
            )
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, EntryNotFoundError):
        if offline():
            raise _not_cached(repo_id, repo_type, revision, what) from None
        raise UserError(
            f"cannot reach the hub for {what} {repo_id!r} and it is not cached",
            expected=fetch_hint(repo_id, repo_type, revision),
        ) from None
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError, HfHubHTTPError) as err:
        raise UserError(
            f"{what} {repo_id!r} is neither a local path nor fetchable from the hub: {first_line(err)}",
            expected="an existing local path, or a hub id you can access (HF_TOKEN for gated repos)",
        ) from None


def model_dir(name_or_path: str | Path, *, weights: bool = True) -> Path:
    """A local model/tokenizer/adapter directory for a path or hub id; `weights=False` fetches
    everything but the safetensors weights (config, tokenizer, remote code)."""
    local = Path(name_or_path).expanduser()
    if local.exists() or not is_hub_id(str(name_or_path)):
        return local
    directory = snapshot(str(name_or_path), patterns=MODEL_FILES if weights else TOKENIZER_FILES)
    has_weights = any(directory.glob("*.safetensors"))
    if weights and not has_weights and not (directory / "adapter_config.json").is_file():
        raise UserError(
            f"the hub cache holds no safetensors weights for {name_or_path!r}",
            file=str(directory),
            expected=fetch_hint(str(name_or_path)),
        )
    return directory


def hub_name(name_or_path: str | Path | None) -> str | None:
    """`name_or_path` when it is a hub id rather than a local path (what a model card may name)."""
    text = str(name_or_path or "")
    return text if is_hub_id(text) and not Path(text).expanduser().exists() else None


@dataclass(frozen=True)
class DatasetRef:
    """A hub dataset as `datasets.load_dataset` takes it: `name`, optional `config`, `split`, `revision`.

    In a recipe: a hub id string (`HuggingFaceTB/smoltalk`) or a mapping
    `{name: HuggingFaceTB/smoltalk, config: all, split: train, revision: main}`."""

    name: str
    config: str | None = None
    split: str = "train"
    revision: str | None = None


def load_dataset(ref: DatasetRef) -> datasets.Dataset:
    """One split of a hub dataset: from its cached snapshot when there is one (offline too), else
    downloaded by `datasets.load_dataset`."""
    cached = _cached_dataset_dir(ref)
    if cached is not None:
        try:
            return _quiet_load(str(cached), ref.config, ref.split)
        except (FileNotFoundError, ValueError) as err:  # a config/split missing, or not downloaded yet
            _refuse_missing_config(ref, str(cached))
            if offline():
                raise UserError(
                    f"cannot read dataset {ref.name!r} (config {ref.config}, split {ref.split}) from the "
                    f"hub cache: {first_line(err)}",
                    expected=f"an existing config and split, cached with {fetch_hint(ref.name, 'dataset')}",
                ) from None
    elif offline():
        raise _not_cached(ref.name, "dataset", ref.revision, "dataset")
    try:
        return _quiet_load(ref.name, ref.config, ref.split, revision=ref.revision)
    except Exception as err:  # noqa: BLE001 - missing, private, bad config/split: one line for the user
        _refuse_missing_config(ref, ref.name)
        raise UserError(
            f"cannot load dataset {ref.name!r} (config {ref.config}, split {ref.split}): {first_line(err)}",
            expected="a hub dataset id with an existing config and split",
        ) from None


def _refuse_missing_config(ref: DatasetRef, path: str) -> None:
    """A `UserError` listing the configs when no config was given and the dataset has several."""
    if ref.config is not None:
        return
    try:
        configs = datasets.get_dataset_config_names(path)
    except Exception:  # noqa: BLE001 - the caller reports the load error itself
        return
    if len(configs) > 1:
        raise UserError(
            f"dataset {ref.name!r} has {len(configs)} configs and none is set: {', '.join(configs)}",
            expected=f"a config, e.g. {{name: {ref.name}, config: {configs[0]}}} "
            "(a recipe's data.train/data.eval entry, or a prepare source's `config:`)",
        )


def _cached_dataset_dir(ref: DatasetRef) -> Path | None:
    try:
        return Path(
            snapshot_download(ref.name, repo_type="dataset", revision=ref.revision, local_files_only=True)
        )
    except (LocalEntryNotFoundError, EntryNotFoundError):
        return None


def _quiet_load(path: str, config: str | None, split: str, **kwargs: Any) -> datasets.Dataset:
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    try:
        return datasets.load_dataset(path, config, split=split, **kwargs)
    finally:
        datasets.logging.set_verbosity(verbosity)
