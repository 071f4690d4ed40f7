"""Redaction of secrets in URLs before they reach a message, a log line, a record or metadata.

A manifest URL may carry a password (`https://user:pass@host/...`) or a signed query string
(`?token=...`, `X-Amz-Signature=...`). Such values must never be stored in Dagster's event storage,
compute logs, `error.json`, `probe.json` or CLI output. `redact_url` keeps the scheme, host, port, path
and the names of query parameters, and replaces userinfo and the values of secret-looking parameters
with `***`; `redact_text` does that for every URL inside a free text (yt-dlp and requests messages).
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"
# query parameter names whose values are secrets (case-insensitive, matched anywhere in the name)
_SECRET_PARAM = re.compile(
    r"(token|key|sig|secret|pass|pwd|auth|credential|session|cookie|jwt|bearer|code|hmac|hash|policy|ticket)",
    re.I,
)
_URL = re.compile(r"""[A-Za-z][A-Za-z0-9+.\-]{0,30}://[^\s'"<>()\[\]{}]+""")


def redact_url(url: object) -> str:
    """`url` with userinfo and secret query values replaced by `***` (text that is not a URL: unchanged,
    except that anything before an `@` in what looks like an authority is masked)."""
    text = str(url)
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # unparsable (bad port, ...): mask anything that looks like userinfo
        return re.sub(r"//[^/@\s]*@", f"//{MASK}@", text)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{MASK}@{netloc.rsplit('@', 1)[1]}"
    query = parts.query
    if query:
        out = []
        for item in query.split("&"):
            name, eq, value = item.partition("=")
            if eq and value and _SECRET_PARAM.search(urllib.parse.unquote_plus(name)):
                value = MASK
            out.append(f"{name}{eq}{value}")
        query = "&".join(out)
    fragment = parts.fragment
    if fragment and "=" in fragment:  # OAuth implicit flow puts tokens in the fragment
        fragment = MASK
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


def redact_text(text: object) -> str:
    """`text` with every URL in it passed through `redact_url`."""
    return _URL.sub(lambda m: redact_url(m.group(0)), str(text))
