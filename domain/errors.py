"""The project's one root exception; every error MAMS raises on purpose derives from it."""

from __future__ import annotations


class MamsError(Exception):
    """Root of every error MAMS raises on purpose. Messages say what to do next."""
