"""`dlm-sft export`: its arguments and how they call `sft.export.exporter`.

dlm-sft export RUN_OR_CHECKPOINT --output DIR [--format auto|dream|llada|sdar|native]
               [--adapter NAME_OR_PATH] [--dtype auto|bf16|fp32] [--max-shard-size 5GB]
               [--push-to-hub REPO [--private]]
dlm-sft export DIR --list-adapters
"""

from __future__ import annotations

import argparse

from sft.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    export = commands.add_parser(
        "export",
        help="merge a LoRA adapter / convert a run into a standalone instruct checkpoint",
        description="Write an instruct checkpoint (weights, config, tokenizer with chat template, "
        "generation_config.json, model card) in the base model's own layout or another one.",
    )
    export.add_argument(
        "source", help="training output, model directory, adapter directory, or a directory of adapters"
    )
    export.add_argument("--output", "-o", help="directory to write the checkpoint to")
    export.add_argument(
        "--format",
        default="auto",
        help="auto: the base model's own layout; native: transformers' Qwen2/Llama classes; or a "
        "family's release layout (dream, llada: see docs/export.md)",
    )
    export.add_argument(
        "--adapter", default=None, help="adapter to merge: a directory, or a name from --list-adapters"
    )
    export.add_argument(
        "--list-adapters", action="store_true", help="list the adapters under SOURCE and exit"
    )
    export.add_argument("--dtype", default="auto", choices=("auto", "bf16", "fp32"), help="weights' dtype")
    export.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB"
    )
    export.add_argument(
        "--push-to-hub",
        metavar="REPO",
        default=None,
        help="then upload the export to this hub repository (org/name; created when missing)",
    )
    export.add_argument("--private", action="store_true", help="create the --push-to-hub repo private")
    return export


def run(args: argparse.Namespace) -> int:
    if args.list_adapters:
        from sft.export.adapters import find_adapters

        adapters = find_adapters(args.source)
        if not adapters:
            print(f"no adapters under {args.source}")
        for adapter in adapters:
            print(adapter.line())
        return 0
    if not args.output:
        raise UserError("the output directory is missing", key="--output", expected="--output DIR")
    from sft.export.exporter import export_checkpoint, push_to_hub

    result = export_checkpoint(
        args.source,
        args.output,
        fmt=args.format,
        adapter=args.adapter,
        dtype=args.dtype,
        max_shard_size=args.max_shard_size,
        repo_id=args.push_to_hub,
    )
    merged = f", merged {result.adapter}" if result.adapter else ""
    print(f"exported {result.format} checkpoint ({result.dtype}{merged}) to {result.output}")
    if args.push_to_hub:
        print(f"pushed to {args.push_to_hub}: {push_to_hub(result.output, args.push_to_hub, args.private)}")
    return 0
