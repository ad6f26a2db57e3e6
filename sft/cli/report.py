"""`dlm-sft report RUN_DIR [--output PNG]`: a run's curves and summary (`sft.report`)."""

from __future__ import annotations

import argparse


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    report = commands.add_parser("report", help="loss / eval-loss / lr curves (PNG) and a run summary")
    report.add_argument("run_dir")
    report.add_argument("--output", default=None, help="PNG path (default RUN_DIR/report.png)")
    return report


def run(args: argparse.Namespace) -> int:
    from sft.report import write_run_report

    print(write_run_report(args.run_dir, args.output))
    return 0
