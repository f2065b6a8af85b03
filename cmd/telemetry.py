"""Error reporting to Sentry, when `SENTRY_DSN` is set; nothing at all when it is not.

`init_sentry(args)` is called once by the CLI entry (`mams.cli.main`) after parsing:
- unhandled exceptions (bugs) reach Sentry through the SDK's excepthook integration and
  are sent before the process exits;
- runtime failures the CLI reports itself (exit status 1) are sent by `report(exc)`;
  bad input (ConfigError, exit 2) is the user's to fix and is not sent;
- structlog events at level error or above are sent as Sentry events, tagged with the
  `negotiation_id` / `session_id` they carry.
Every event is tagged with the command (`run`, `broker`, ...) and, where the command line
names them, the market (scenario file) and the session or negotiation id.

Environment: SENTRY_DSN (on/off), SENTRY_ENVIRONMENT (default "development"),
SENTRY_RELEASE (default "mams@<version>"). No personal data is sent (send_default_pii off)
and no performance tracing; integrations that patch third-party libraries automatically
(asyncpg, openai, anthropic...) stay off, so reporting never changes how MAMS runs.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from mams.version import __version__

__all__ = ["init_sentry", "report", "tags_for"]

_ERROR_LEVELS = frozenset({"error", "critical", "exception", "fatal"})
_ID_TAGS = ("negotiation_id", "session_id", "agent", "market")


def tags_for(args: argparse.Namespace) -> dict[str, str]:
    """The Sentry tags a command line names: command, market, session, negotiation."""
    tags = {"command": str(getattr(args, "command", "") or "")}
    scenario = getattr(args, "scenario", None)
    if isinstance(scenario, str) and scenario:
        tags["market"] = Path(scenario).stem
    for name, tag in (("session", "session_id"), ("negotiation_id", "negotiation_id")):
        value = getattr(args, name, None)
        if isinstance(value, str) and value:
            tags[tag] = value
    return tags


def _to_sentry(_logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: an error-level event also goes to Sentry, then on as usual."""
    if method in _ERROR_LEVELS:
        import sentry_sdk

        with sentry_sdk.new_scope() as scope:
            for key in _ID_TAGS:
                if key in event_dict:
                    scope.set_tag(key, str(event_dict[key]))
            scope.set_context("log", {k: repr(v) for k, v in event_dict.items()})
            exc = event_dict.get("exc_info")
            if isinstance(exc, BaseException):
                sentry_sdk.capture_exception(exc)
            elif exc is True:  # log.exception(...) inside an except block
                sentry_sdk.capture_exception()
            else:
                sentry_sdk.capture_message(str(event_dict.get("event", "")), level="error")
    return event_dict


def init_sentry(args: argparse.Namespace, env: Mapping[str, str] = os.environ) -> bool:
    """Start Sentry for this process if SENTRY_DSN is set; whether it was started."""
    dsn = env.get("SENTRY_DSN", "").strip()
    if not dsn:
        return False
    import sentry_sdk  # only when reporting is on

    sentry_sdk.init(
        dsn=dsn,
        environment=env.get("SENTRY_ENVIRONMENT") or "development",
        release=env.get("SENTRY_RELEASE") or f"mams@{__version__}",
        send_default_pii=False,
        auto_enabling_integrations=False,
        traces_sample_rate=None,
    )
    for key, value in tags_for(args).items():
        sentry_sdk.set_tag(key, value)
    config = structlog.get_config()
    processors = list(config.get("processors", []))
    if _to_sentry not in processors:
        structlog.configure(processors=[_to_sentry, *processors])
    return True


def report(exc: BaseException) -> None:
    """Send an error the CLI handled itself (it exits 1); a no-op without Sentry."""
    import sys

    if "sentry_sdk" not in sys.modules:  # never initialised: nothing to do, import nothing
        return
    import sentry_sdk

    if sentry_sdk.get_client().is_active():
        sentry_sdk.capture_exception(exc)
