"""User-facing errors: the CLI prints them without a traceback and exits non-zero."""
from __future__ import annotations

import difflib
from typing import Iterable


class HgltrError(Exception):
    """An error caused by the user's input; `hint` says how to fix it."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class ConfigError(HgltrError):
    """A bad config key, value or file."""

    exit_code = 2


class UnknownComponentError(HgltrError):
    """A name that no plugin registered."""

    exit_code = 2


class DuplicateComponentError(HgltrError):
    """Two plugins registered the same name for the same kind of component."""


def close_matches(word: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Candidates that look like `word` (typos, missing dashes), best first."""
    candidates = list(candidates)
    found = difflib.get_close_matches(word, candidates, n=n, cutoff=0.5)
    for cand in candidates:  # substring hits ("vpt" -> "vpt-deep") count too
        if len(found) >= n:
            break
        if (word.lower() in cand.lower() or cand.lower() in word.lower()) and cand not in found:
            found.append(cand)
    return found


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """' Did you mean: a, b?' or '' when nothing is close."""
    found = close_matches(word, candidates)
    return f" Did you mean: {', '.join(found)}?" if found else ""
