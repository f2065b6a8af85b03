"""The project's one root exception; every error MAMS raises on purpose derives from it."""

from __future__ import annotations


class MamsError(Exception):
    """Root of every error MAMS raises on purpose. Messages say what to do next."""


class ConfigError(MamsError):
    """Configuration that cannot work (a missing API key, an unknown model); the message
    names what to set. The CLI exits with status 2, having written nothing."""
