"""`python -m data_prep RECIPE.yaml [key=value ...]`: the same as `dlm-sft prepare`."""

from __future__ import annotations

import sys

from data_prep.pipeline import prepare
from sft.errors import UserError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print("usage: python -m data_prep RECIPE.yaml [key=value ...]")
        return 0 if args else 2
    try:
        prepare(args[0], args[1:])
    except UserError as err:
        print(f"error: {err.line()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
