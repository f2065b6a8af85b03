"""The one redactor of server URLs (NATS URLs, PostgreSQL DSNs) shown to people or logs."""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit

__all__ = ["redact_url"]

# Query parameters that carry a secret in a PostgreSQL DSN (libpq reads password from the
# query too) or a NATS URL.
_SECRET_PARAMS = frozenset({"password", "pass", "token", "sslpassword"})


def redact_url(url: str) -> str:
    """Return ``url`` safe to print or log: any password (and secret query value) is ``***``.

    Works for ``nats://user:pw@host:4222`` and ``postgresql://user:pw@host/db`` alike, and
    keeps the rest as written (host case, several ``host:port`` pairs). A text that is not
    a URL at all is replaced by ``<unparsable URL>`` rather than shown: it may still hold a
    password.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    # Edit the text in place rather than re-assembling it with urlunsplit, which would drop
    # an empty authority ("postgresql:///db?host=/tmp" -> "postgresql:/db?host=/tmp").
    out = url
    if password is not None:
        # netloc is "userinfo@hostinfo" and the password is the text between userinfo's
        # first ':' and the last '@': replacing that span keeps everything else as written.
        userinfo, _, hostinfo = parts.netloc.rpartition("@")
        user = userinfo.partition(":")[0]
        out = out.replace(parts.netloc, f"{user}:***@{hostinfo}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
            safe = [(k, "***" if k.lower() in _SECRET_PARAMS else v) for k, v in pairs]
            start = out.index("?") + 1
            end = start + len(parts.query)
            out = out[:start] + urlencode(safe, safe="*/") + out[end:]
    return out
