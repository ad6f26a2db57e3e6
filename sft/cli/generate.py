"""`dlm-sft generate CHECKPOINT --prompt TEXT [--prompt TEXT ...] [--interactive] [sampler options]`:
sample replies from a checkpoint, with its chat template."""

from __future__ import annotations

import argparse
import sys
import time

from sft.cli.sampler_options import CHECKPOINT_HELP, add_sampler_options, sampler_settings
from sft.errors import UserError


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser("generate", help="sample replies from a checkpoint (chat template applied)")
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument("--prompt", action="append", default=[], help="a user message; repeat for a batch")
    parser.add_argument("--system", default=None, help="system message")
    parser.add_argument("--interactive", action="store_true", help="chat loop (empty line or /exit ends)")
    parser.add_argument("--raw", action="store_true", help="no chat template: continue the prompt text")
    add_sampler_options(parser, max_new_tokens=64)
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from sft.sampling.chat import chat_loop, generate_replies
    from sft.sampling.loading import load_for_sampling

    if not args.prompt and not args.interactive:
        raise UserError("nothing to do", key="--prompt", expected="--prompt TEXT or --interactive")
    settings = sampler_settings(args, args.max_new_tokens)
    loaded = load_for_sampling(args.checkpoint, device=args.device)
    device = next(loaded.model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(args.seed)
    common = dict(mask_token_id=loaded.mask_token_id, shift=loaded.family.shift, generator=generator)
    system = [{"role": "system", "content": args.system}] if args.system else []
    if args.prompt:
        conversations = [[*system, {"role": "user", "content": p}] for p in args.prompt]
        start = time.perf_counter()
        replies = generate_replies(
            loaded.model,
            loaded.tokenizer,
            conversations,
            chat_template=not args.raw,
            **common,
            **settings.kwargs(),
        )
        seconds = time.perf_counter() - start
        for i, reply in enumerate(replies):
            print(reply if len(replies) == 1 else f"[{i}] {reply}")
        print(
            f"({len(replies)} x {settings.max_new_tokens} tokens, {settings.steps} steps, {seconds:.2f}s)",
            file=sys.stderr,
        )
    if args.interactive:
        if args.raw:
            raise UserError("--interactive needs the chat template", key="--raw")
        chat_loop(loaded.model, loaded.tokenizer, settings, system=args.system, **common)
    return 0
