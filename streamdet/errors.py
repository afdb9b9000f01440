"""Errors as people read them: one line, bounded, never a traceback."""
from __future__ import annotations


def one_line(exc: BaseException | str, limit: int | None = 200, with_type: bool = False) -> str:
    """The message folded onto one line and cut to `limit` characters (None: whole); the
    exception's type when it says nothing (or always, with `with_type`)."""
    text = str(exc)
    if text.startswith("The following operation failed in the TorchScript interpreter"):
        text = text.strip().splitlines()[-1]  # the error itself, after TorchScript's two tracebacks
    if isinstance(exc, BaseException) and (with_type or not text.strip()):
        text = f"{type(exc).__name__}: {text}" if text.strip() else type(exc).__name__
    return " ".join(text.split())[:limit]
