"""Wording shared by log lines and the command line: counts with the right plural.

Pure functions, called from any thread.
"""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``count`` followed by ``noun``, in the plural unless ``count`` is 1.

    :param count: how many.
    :param noun: the singular (``"channel"``).
    :param nouns: the plural when it is not ``noun + "s"``.
    :returns: e.g. ``"1 channel"``, ``"0 channels"``, ``"3 channels"``.
    """
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
