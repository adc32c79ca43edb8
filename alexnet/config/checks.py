"""What every config section shares: the error type and small helpers for ``problems()``."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

from alexnet.errors import UserError


class ConfigError(UserError):
    """Every problem found in a configuration, reported together."""

    def __init__(self, problems: Sequence[str], source: str = "") -> None:
        self.problems = list(problems)
        where = f" ({source})" if source else ""
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:\n{lines}")


def suggest(word: str, choices: Sequence[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def positive(section: Any, *names: str) -> list[str]:
    return [
        f"{n}: must be > 0, got {getattr(section, n)}" for n in names if getattr(section, n) <= 0
    ]


def non_negative(section: Any, *names: str) -> list[str]:
    return [
        f"{n}: must be >= 0, got {getattr(section, n)}" for n in names if getattr(section, n) < 0
    ]
