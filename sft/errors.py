"""The one exception type for mistakes a user can make (recipe, CLI, data, checkpoint).

It carries *where* (a file and/or key), *what* went wrong and *what was expected*, and renders as
one line; the CLI prints that line and exits with its `exit_code` (2).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, reported as one line: `where: what (expected ...)`."""

    exit_code = 2
    """The CLI's exit status for it."""

    def __init__(
        self,
        what: str,
        *,
        file: str | None = None,
        key: str | None = None,
        expected: str | None = None,
    ) -> None:
        self.what = what
        self.file = file
        self.key = key
        self.expected = expected
        super().__init__(self.line())

    def line(self) -> str:
        where = ": ".join(str(part) for part in (self.file, self.key) if part)
        text = f"{where}: {self.what}" if where else self.what
        if self.expected:
            text += f" (expected {self.expected})"
        return text
