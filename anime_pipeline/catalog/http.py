"""The one HTTP client of the catalog stage.

`HttpClient` wraps a `requests.Session` (a requests-cache `CachedSession` on disk when a cache
directory is configured) with:

* urllib3 `Retry` on 429/500/502/503/504 and on connect/read errors, for GET and POST (GraphQL
  reads are POSTs). `Retry-After` is honoured up to `max_retry_after` seconds; without it the
  client waits `backoff_factor * 2**(n-1)` (+ up to `backoff_jitter`) before retry n, at most
  `backoff_max`. After `total_retries` the last response/error becomes a `CatalogHTTPError`, so a
  429 storm ends with a clear error instead of a hang (see `HttpConfig.worst_case_wait_s`).
  A response whose body breaks off (connection reset mid-body, fewer bytes than Content-Length, a
  read timeout while reading the body) is not seen by urllib3's Retry (requests reads the body
  later); `HttpClient` retries it itself, with the same backoff, while the call has sent at most
  `total_retries` requests.
* a deadline on the body: `read_timeout` bounds each socket read, so a server sending a byte every
  few seconds would hold a request for as long as it likes; the whole body must arrive within
  `body_timeout` seconds of the headers, else the connection is shut down and the attempt counts
  as a body that broke off (sent again as above, then a `CatalogHTTPError` of kind "timeout").
* a per-host sliding-window rate limiter (`RateLimiter`) applied to every request that goes to
  the network, retries included. Cache hits cost nothing. (pyrate-limiter was tried and dropped: it
  waits with its own `time.sleep`, so neither the injected clock nor a bounded wait can reach it.)
* a disk cache (sqlite) that also stores POST responses, keyed on the JSON body, so
  re-materialising an asset does not refetch. Only HTTP 200 JSON documents without GraphQL
  `errors` are cached, serialised as JSON (never pickle: the cache file is untrusted input).
  Secret headers (`X-MAL-CLIENT-ID`, `Authorization`) are excluded from the cache keys and
  redacted from the stored requests.
* `stats`: requests actually sent to the network per host (retries count, cache hits do not);
  `cache_hits`: responses served from the cache per host.

Header values are never logged nor put in exception messages; secret header values are also
scrubbed from any message text.

The User-Agent must be configured (`ANIME_PIPELINE_USER_AGENT`): Shikimori's API rules require the
application's name in it and warn that an IP sending requests without a proper one can be banned, so
`HttpClient` refuses an empty, placeholder or browser-imitating value instead of sending it.

Time is injected: `HttpClient(config, clock=..., sleep=...)` drives the rate limiter, the retry
backoff and the re-sends, so tests check waits without racing the wall clock.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import re
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from requests.exceptions import ChunkedEncodingError
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError, NewConnectionError, ReadTimeoutError
from urllib3.util.retry import Retry

from anime_pipeline.catalog.errors import CatalogConfigError, CatalogError, CatalogHTTPError

__all__ = [
    "DEFAULT_RATE_LIMITS",
    "SECRET_HEADERS",
    "USER_AGENT_ENV",
    "CatalogError",
    "CatalogHTTPError",
    "HttpClient",
    "HttpConfig",
    "RateLimiter",
    "check_user_agent",
    "host_key",
]

log = logging.getLogger(__name__)

USER_AGENT_ENV = "ANIME_PIPELINE_USER_AGENT"
# Text that marks a User-Agent as an unfilled template rather than the name of a real application.
_UA_PLACEHOLDERS = ("ANIME_PIPELINE_USER_AGENT", "github.com/anime-pipeline", "…", "your-app", "changeme")
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_METHODS = frozenset({"GET", "POST", "HEAD", "OPTIONS"})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
# Lower-case header names whose values are secrets: excluded from cache keys, redacted from the
# cached requests and scrubbed from messages.
SECRET_HEADERS = frozenset({"x-mal-client-id", "authorization", "cookie", "x-api-key"})

RateSpec = tuple[float | None, float | None]  # (per_second, per_minute); None = no limit of that kind

# From the APIs' own documentation (docs/CATALOG_APIS.md): Shikimori 5 rps + 90 rpm; AniList 90/min,
# currently degraded to 30/min (plus an undocumented burst limiter, so at most 1/s); Jikan
# 3/s + 60/min; MAL publishes no limit (community guidance ~1/s), so stay conservative.
DEFAULT_RATE_LIMITS: dict[str, RateSpec] = {
    "shikimori.one": (5.0, 90.0),
    "shikimori.io": (5.0, 90.0),
    "graphql.anilist.co": (1.0, 30.0),
    "api.jikan.moe": (3.0, 60.0),
    "api.myanimelist.net": (2.0, 60.0),
}


@dataclass(frozen=True)
class HttpConfig:
    """Settings of `HttpClient`. Times are seconds.

    `rate_limits` maps a host name (also matching its subdomains) to `(per_second, per_minute)`;
    hosts not listed use `default_rate_limit` (None: not limited). `cache_dir=None` disables the
    disk cache. `cache_expire_after=None` keeps cached responses forever.
    """

    user_agent: str = ""  # required: the application's name and a contact (see check_user_agent)
    cache_dir: Path | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 30.0  # each socket read (headers, every piece of the body)
    body_timeout: float = 60.0  # the whole body, from the headers on (catalog bodies are KBs)
    total_retries: int = 5
    backoff_factor: float = 1.0
    backoff_jitter: float = 1.0
    backoff_max: float = 60.0
    max_retry_after: float = 60.0
    rate_limits: Mapping[str, RateSpec] = field(default_factory=lambda: dict(DEFAULT_RATE_LIMITS))
    default_rate_limit: RateSpec | None = None
    max_rate_wait: float = 120.0
    cache_expire_after: float | None = 30 * 24 * 3600.0

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> HttpConfig:
        """Config from `anime_pipeline.settings.Settings` (user agent, cache under the data dir)."""
        kw: dict[str, Any] = {"user_agent": settings.user_agent, "cache_dir": Path(settings.http_cache_dir)}
        kw.update(overrides)
        return cls(**kw)

    @property
    def max_attempts(self) -> int:
        """Most requests one call (one URL, no redirect) may send: urllib3's 1 + total_retries, plus the
        re-sends of broken bodies, which start only while at most total_retries were sent."""
        return 2 * self.total_retries + 1

    @property
    def worst_case_wait_s(self) -> float:
        """Upper bound of the time one call may take (timeouts, retries, rate limiting)."""
        per_attempt = self.connect_timeout + self.read_timeout + self.body_timeout
        per_retry = max(self.backoff_max, self.max_retry_after)
        attempts = self.max_attempts
        return attempts * (per_attempt + self.max_rate_wait) + (attempts - 1) * per_retry


def check_user_agent(user_agent: str | None) -> str:
    """The User-Agent, stripped, when it names a real application; else `CatalogConfigError`.

    Refused: empty, a placeholder (the settings' default text, `…`), or a browser's
    (`Mozilla/…`: Shikimori asks API clients not to imitate a browser)."""
    ua = (user_agent or "").strip()
    problem = None
    if not ua:
        problem = "no User-Agent is configured"
    elif any(marker.lower() in ua.lower() for marker in _UA_PLACEHOLDERS):
        problem = f"the User-Agent {ua!r} is placeholder text"
    elif ua.lower().startswith("mozilla/"):
        problem = f"the User-Agent {ua!r} imitates a browser"
    elif any(ord(c) < 32 or ord(c) > 126 for c in ua):
        problem = "the User-Agent has characters an HTTP header cannot carry"
    if problem:
        raise CatalogConfigError(
            f"{problem}: set {USER_AGENT_ENV} to your application's name and a contact, e.g. "
            f"'my-team-dataset/1.0 (me@example.org)'. Shikimori requires the application name in the "
            f"User-Agent and may ban IPs that send requests without one."
        )
    return ua


def host_key(url: str) -> str:
    """`host` or `host:port` (non-default port) of a URL, lower-case, without user info."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    default = {"http": 80, "https": 443}.get(parts.scheme.lower())
    return host if port is None or port == default else f"{host}:{port}"


class RateLimiter:
    """Per-host sliding-window limiter: at most N requests in any window of `period` seconds.

    `limits` maps a host (matching itself and its subdomains) to `(per_second, per_minute)`.
    A fractional `per_second` below 1 becomes "1 request per 1/per_second seconds". Hosts that
    share a rule (shikimori.one and its CDN subdomains) share its window. `acquire` blocks until a
    request may go; if that would take longer than `max_wait`, it raises `CatalogHTTPError`.
    """

    def __init__(
        self,
        limits: Mapping[str, RateSpec],
        default: RateSpec | None = None,
        *,
        max_wait: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self._rules = {host.lower().rstrip("."): self._windows(spec) for host, spec in limits.items()}
        self._default = self._windows(default)
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._log: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _windows(spec: RateSpec | None) -> list[tuple[int, float]]:
        if not spec:
            return []
        per_second, per_minute = spec
        windows = []
        for rate, period in ((per_second, 1.0), (per_minute, 60.0)):
            if rate is None or rate <= 0 or rate == float("inf"):
                continue
            if rate >= 1:
                windows.append((int(rate), period))
            else:
                windows.append((1, period / rate))
        return windows

    def rule_for(self, host: str) -> tuple[str, list[tuple[int, float]]]:
        host = host.lower().split(":")[0]
        for key, windows in self._rules.items():
            if host == key or host.endswith("." + key):
                return key, windows
        return host, self._default

    def acquire(self, host: str) -> float:
        """Wait for a free slot for `host`; returns the seconds waited."""
        key, windows = self.rule_for(host)
        if not windows:
            return 0.0
        longest = max(period for _, period in windows)
        waited = 0.0
        while True:
            with self._lock:
                now = self._clock()
                stamps = self._log.setdefault(key, deque())
                while stamps and now - stamps[0] >= longest:
                    stamps.popleft()
                wait = 0.0
                for count, period in windows:
                    recent = [t for t in stamps if now - t < period]
                    if len(recent) >= count:
                        wait = max(wait, recent[-count] + period - now)
                if wait <= 0:
                    stamps.append(now)
                    return waited
            if waited + wait > self.max_wait:
                raise CatalogHTTPError(
                    f"rate limit for {key}: waiting {waited + wait:.1f}s exceeds max_rate_wait={self.max_wait}s",
                    url=host,
                    kind="rate_limit",
                )
            self._sleep(wait)
            waited += wait


class _CatalogRetry(Retry):
    """urllib3 Retry with a capped Retry-After, backoff from the first retry on, an injected sleep and
    a hook: `on_retry()` runs after the pause and before each retry goes out (rate limiting + stats)."""

    def __init__(
        self,
        *args: Any,
        retry_after_cap: float = 60.0,
        on_retry: Callable[[], None] | None = None,
        sleep_fn: Callable[[float], None] = time.sleep,
        **kw: Any,
    ):
        super().__init__(*args, **kw)
        self.retry_after_cap = retry_after_cap
        self.on_retry = on_retry
        self.sleep_fn = sleep_fn

    def new(self, **kw: Any) -> _CatalogRetry:
        new = super().new(**kw)
        new.retry_after_cap = self.retry_after_cap
        new.on_retry = self.on_retry
        new.sleep_fn = self.sleep_fn
        return new

    def parse_retry_after(self, retry_after: str) -> float:
        return min(float(super().parse_retry_after(retry_after)), float(self.retry_after_cap))

    def get_backoff_time(self) -> float:
        n = len(list(takewhile(lambda h: h.redirect_location is None, reversed(self.history))))
        if n == 0:
            return 0.0
        value = self.backoff_factor * (2 ** (n - 1))
        if self.backoff_jitter:
            value += random.random() * self.backoff_jitter
        return float(max(0.0, min(self.backoff_max, value)))

    def sleep(self, response=None) -> None:
        """Retry-After (capped) when the server sent one, else the backoff; through `sleep_fn`."""
        wait = (
            self.get_retry_after(response)
            if self.respect_retry_after_header and response is not None
            else None
        )
        if not wait:
            wait = self.get_backoff_time()
        if wait > 0:
            self.sleep_fn(wait)
        if self.on_retry is not None:
            self.on_retry()


class BodyTimeout(requests.exceptions.ConnectionError):
    """The response's body did not arrive whole within `HttpConfig.body_timeout` of its headers."""


class _CountingAdapter(HTTPAdapter):
    """Calls `before_send(host)` for every request that really goes to the network, and reads the body
    (of a non-streamed request) under a deadline of `body_timeout` seconds from the headers."""

    def __init__(self, before_send: Callable[[str], None], body_timeout: float | None = None, **kw: Any):
        self._before_send = before_send
        self._body_timeout = body_timeout
        super().__init__(**kw)

    def send(self, request, stream=False, **kw):
        self._before_send(host_key(request.url or ""))
        if stream or not self._body_timeout:
            return super().send(request, stream=stream, **kw)
        resp = super().send(request, stream=True, **kw)
        _read_body_within(resp, self._body_timeout)
        return resp


def _read_body_within(resp: requests.Response, limit_s: float) -> None:
    """Read `resp`'s body (requests' own reading: decoding, error mapping) while a timer stands ready to
    shut the connection down at `limit_s`; a cut body raises BodyTimeout, never passes as complete."""
    cut = threading.Event()
    conn = getattr(resp.raw, "connection", None)  # urllib3's HTTPConnection while the body is unread

    def shut() -> None:
        cut.set()
        sock = getattr(conn, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked read: EOF

    timer = threading.Timer(limit_s, shut)
    timer.daemon = True
    timer.start()
    try:
        _ = resp.content
    except requests.RequestException:
        if not cut.is_set():
            raise
    finally:
        timer.cancel()
    if cut.is_set():  # even a body that "ended" at the cut may be short (no Content-Length): never use it
        resp.close()
        raise BodyTimeout(f"response body not complete within {limit_s}s of its headers", response=resp)


# A UTF-16 surrogate escape (`\ud800`) or a UTF-8-encoded surrogate: json.loads lets both through as lone
# surrogates, which no UTF-8 writer (Parquet, hashlib input, logs) accepts.
_SURROGATE_IN_JSON = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _scrub_surrogates(obj: Any) -> Any:
    if isinstance(obj, str):
        return _LONE_SURROGATE.sub("\ufffd", obj)
    if isinstance(obj, list):
        return [_scrub_surrogates(x) for x in obj]
    if isinstance(obj, dict):
        return {_scrub_surrogates(k): _scrub_surrogates(v) for k, v in obj.items()}
    return obj


def _loads(content: bytes | str) -> Any:
    """`json.loads` whose only failure is ValueError: a document nested too deeply for the decoder
    (RecursionError) is malformed JSON too. Lone surrogates in strings become U+FFFD, so one broken
    escape in one title cannot fail a whole table write later."""
    try:
        doc = json.loads(content)
        raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
        if _SURROGATE_IN_JSON.search(raw):
            doc = _scrub_surrogates(doc)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    return doc


def _age_s(response: requests.Response) -> float:
    """Seconds since a cached response was stored (requests-cache's `created_at`, UTC)."""
    import datetime as _dt

    created = getattr(response, "created_at", None)
    if created is None:
        return float("inf")
    if created.tzinfo is None:
        created = created.replace(tzinfo=_dt.UTC)
    return (_dt.datetime.now(_dt.UTC) - created).total_seconds()


def _cacheable(response: requests.Response) -> bool:
    """Only a 200 JSON document without GraphQL errors goes into (or stays in) the cache."""
    if response.status_code != 200:
        return False
    try:
        doc = _loads(response.content)
    except ValueError:
        return False
    return not (isinstance(doc, dict) and (doc.get("errors") or ("data" in doc and doc["data"] is None)))


def _broken_body(exc: requests.RequestException) -> bool:
    """The response started but its body broke off: reset or closed mid-body, or a read timeout there."""
    if isinstance(exc, (ChunkedEncodingError, BodyTimeout)):
        return True
    reason = exc.args[0] if exc.args else None
    return isinstance(exc, requests.ConnectionError) and isinstance(reason, ReadTimeoutError)


def _snippet(content: bytes | str, limit: int = 160) -> str:
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    text = " ".join(text.split())
    if not text:
        return "(empty body)"
    return repr(text[:limit] + ("…" if len(text) > limit else ""))


def _graphql_messages(errors: Any) -> str:
    items = errors if isinstance(errors, list) else [errors]
    msgs = []
    for err in items[:5]:
        if isinstance(err, dict):
            msg = str(err.get("message") or err.get("exception") or json.dumps(err, ensure_ascii=False)[:160])
            if err.get("status") is not None:
                msg += f" (status {err['status']})"
        else:
            msg = str(err)
        msgs.append(msg)
    if len(items) > 5:
        msgs.append(f"… {len(items) - 5} more")
    return "; ".join(msgs)


def _describe_body(content: bytes) -> str:
    """A short, readable account of an error body (JSON error envelopes or a text snippet)."""
    try:
        doc = _loads(content)
    except ValueError:
        return _snippet(content)
    if isinstance(doc, dict):
        if doc.get("errors"):
            return _graphql_messages(doc["errors"])
        message = doc.get("message") or doc.get("messages")
        error = doc.get("error")
        parts = [str(x) for x in (doc.get("type"), message, error) if x]
        if parts:
            return " / ".join(parts)
    return _snippet(content)


class HttpClient:
    """Shared HTTP client: retries, rate limits, disk cache, request stats. See the module doc."""

    def __init__(
        self,
        config: HttpConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.config = config
        self.user_agent = check_user_agent(config.user_agent)
        self.clock = clock
        self.sleep = sleep
        self.stats: Counter[str] = Counter()  # requests sent to the network, per host (retries included)
        self.cache_hits: Counter[str] = Counter()  # responses served from the disk cache, per host
        self._secrets: set[str] = set()
        self._lock = threading.Lock()
        self._local = threading.local()  # .sent: requests sent to the network by the current call
        self.limiter = RateLimiter(
            self.config.rate_limits,
            self.config.default_rate_limit,
            max_wait=self.config.max_rate_wait,
            clock=clock,
            sleep=sleep,
        )
        self.session = self._build_session()

    # Construction ------------------------------------------------------------------------------
    def _build_session(self) -> requests.Session:
        cfg = self.config
        session: requests.Session
        if cfg.cache_dir is not None:
            from requests_cache import CachedSession
            from requests_cache.policy.expiration import NEVER_EXPIRE

            try:
                from requests_cache.policy.settings import DEFAULT_IGNORED_PARAMS
            except ImportError:  # pragma: no cover - layout of other requests-cache versions
                DEFAULT_IGNORED_PARAMS = ("Authorization",)  # type: ignore[assignment]
            cache_dir = Path(cfg.cache_dir)
            cache_dir.mkdir(parents=True, exist_ok=True)
            ignored = tuple(DEFAULT_IGNORED_PARAMS) + tuple(
                h for h in ("X-MAL-CLIENT-ID", "X-Api-Key", "Cookie") if h not in DEFAULT_IGNORED_PARAMS
            )
            session = CachedSession(
                str(cache_dir / "catalog_http"),
                backend="sqlite",
                # JSON, not requests-cache's default pickle: loading a pickle runs code, and the cache file
                # lives in the data dir (shared volumes, restored backups), so it is untrusted input.
                serializer="json",
                expire_after=NEVER_EXPIRE if cfg.cache_expire_after is None else cfg.cache_expire_after,
                allowable_methods=("GET", "POST"),
                allowable_codes=(200,),
                cache_control=False,
                # A cached response with a validator (ETag / Last-Modified) is revalidated on every use:
                # an unchanged synopsis costs a 304 without a body, a changed one is fetched again.
                always_revalidate=True,
                ignored_parameters=ignored,
                filter_fn=_cacheable,
                stale_if_error=False,
            )
        else:
            session = requests.Session()
        retry = _CatalogRetry(
            total=cfg.total_retries,
            allowed_methods=RETRY_METHODS,
            status_forcelist=RETRY_STATUSES,
            backoff_factor=cfg.backoff_factor,
            backoff_jitter=cfg.backoff_jitter,
            backoff_max=cfg.backoff_max,
            respect_retry_after_header=True,
            raise_on_status=False,
            retry_after_cap=cfg.max_retry_after,
            on_retry=self._before_retry,
            sleep_fn=self.sleep,
        )
        adapter = _CountingAdapter(self._before_network, body_timeout=cfg.body_timeout, max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers.update({"User-Agent": self.user_agent, "Accept": "application/json"})
        return session

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # Bookkeeping -------------------------------------------------------------------------------
    def _before_network(self, host: str) -> None:
        self._local.host = host  # urllib3 retries this call on the same host (requests sends redirect=False)
        self.limiter.acquire(host)
        with self._lock:
            self.stats[host] += 1
        self._local.sent = getattr(self._local, "sent", 0) + 1

    def _before_retry(self) -> None:
        self._before_network(getattr(self._local, "host", ""))

    def _remember_secrets(self, headers: Mapping[str, str] | None) -> None:
        for name, value in (headers or {}).items():
            if name.lower() in SECRET_HEADERS and value and len(str(value)) >= 4:
                self._secrets.add(str(value))

    def redact(self, text: str) -> str:
        """`text` with every secret header value this client has seen replaced by `***`."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @property
    def network_requests(self) -> int:
        """Requests sent to the network so far (all hosts, retries included, cache hits excluded)."""
        return sum(self.stats.values())

    @property
    def requests_sent(self) -> int:
        """Alias of `network_requests` (asset metadata)."""
        return self.network_requests

    def summary(self) -> dict[str, dict[str, int]]:
        """Request counts for metadata: {"requests": {host: n}, "cache_hits": {host: n}}."""
        return {"requests": dict(self.stats), "cache_hits": dict(self.cache_hits)}

    # Requests ----------------------------------------------------------------------------------
    def get_json(
        self,
        url: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        max_age_s: float | None = None,
    ) -> Any:
        """GET `url` and return the parsed JSON body (raises `CatalogHTTPError`).

        `max_age_s`: a cached response older than this is fetched again (catalog listings, where a
        scheduled re-collection must see new titles; 0 = always). None: the cache's own expiry.
        """
        return self._request_json("GET", url, params=params, headers=headers, max_age_s=max_age_s)

    def post_graphql(
        self,
        url: str,
        query: str,
        variables: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        max_age_s: float | None = None,
    ) -> dict[str, Any]:
        """POST a GraphQL query; return the whole parsed document (`{"data": ...}`).

        Raises `CatalogHTTPError` (kind "graphql") when the document carries `errors` (even with
        HTTP 200) or no `data`.
        """
        body = {"query": query, "variables": dict(variables or {})}
        doc = self._request_json("POST", url, headers=headers, json_body=body, max_age_s=max_age_s)
        if not isinstance(doc, dict):
            raise CatalogHTTPError(
                self.redact(f"POST {url}: GraphQL response is a JSON {type(doc).__name__}, not an object"),
                url=url,
                kind="graphql",
                status=200,
            )
        if doc.get("errors"):
            raise CatalogHTTPError(
                self.redact(f"POST {url}: GraphQL error: {_graphql_messages(doc['errors'])}"),
                url=url,
                kind="graphql",
                status=200,
            )
        if doc.get("data") is None:
            raise CatalogHTTPError(
                f"POST {url}: GraphQL response has no data", url=url, kind="graphql", status=200
            )
        return doc

    def _display_url(self, method: str, url: str, params: Mapping[str, Any] | None) -> str:
        try:
            return requests.Request(method, url, params=params).prepare().url or url
        except Exception:
            return url

    def _request_json(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        json_body: Any = None,
        max_age_s: float | None = None,
    ) -> Any:
        self._remember_secrets(headers)
        shown = self.redact(self._display_url(method, url, params))
        resp = self._send(
            method, url, shown, params=params, headers=headers, json_body=json_body, max_age_s=max_age_s
        )
        # Redirects are followed here, not by requests: a POST must stay a POST (requests turns a
        # 301/302 POST into a GET, which breaks GraphQL behind shikimori.one → shikimori.io), and
        # secret headers must not travel to another host.
        hops = 0
        while resp.status_code in REDIRECT_STATUSES and resp.headers.get("Location") and hops < MAX_REDIRECTS:
            hops += 1
            target = urljoin(resp.url or url, resp.headers["Location"])
            if host_key(target) != host_key(resp.url or url):
                headers = {k: v for k, v in (headers or {}).items() if k.lower() not in SECRET_HEADERS}
            if resp.status_code == 303:
                method, json_body = "GET", None
            log.warning(
                "%s %s redirected (HTTP %s) to %s; consider configuring the new URL",
                method,
                shown,
                resp.status_code,
                self.redact(target),
            )
            shown = self.redact(self._display_url(method, target, None))
            resp = self._send(
                method, target, shown, params=None, headers=headers, json_body=json_body, max_age_s=max_age_s
            )

        retries = len(getattr(getattr(resp.raw, "retries", None), "history", ()) or ())
        after = f" after {retries} retr{'y' if retries == 1 else 'ies'}" if retries else ""
        if not 200 <= resp.status_code < 300:
            raise CatalogHTTPError(
                self.redact(
                    f"{method} {shown}: HTTP {resp.status_code}{after}: {_describe_body(resp.content)}"
                ),
                url=shown,
                kind="status",
                status=resp.status_code,
            )
        try:
            return _loads(resp.content)
        except ValueError:
            ctype = resp.headers.get("Content-Type", "no content type")
            raise CatalogHTTPError(
                self.redact(
                    f"{method} {shown}: malformed JSON (HTTP {resp.status_code}, {ctype}): {_snippet(resp.content)}"
                ),
                url=shown,
                kind="json",
                status=resp.status_code,
            ) from None

    def _send(
        self,
        method: str,
        url: str,
        shown: str,
        *,
        params: Mapping[str, Any] | None,
        headers: Mapping[str, str] | None,
        json_body: Any,
        max_age_s: float | None = None,
        _refresh: bool = False,
    ) -> requests.Response:
        cfg = self.config
        extra: dict[str, Any] = {"force_refresh": True} if _refresh else {}
        self._local.sent = 0
        resends = 0
        while True:
            try:
                resp = self.session.request(
                    method,
                    url,
                    params=params,
                    headers=dict(headers) if headers else None,
                    json=json_body,
                    timeout=(cfg.connect_timeout, cfg.read_timeout),
                    allow_redirects=False,
                    **extra,
                )
                break
            except requests.RequestException as exc:
                sent = getattr(self._local, "sent", 0)
                if _broken_body(exc) and 0 < sent <= cfg.total_retries:
                    # urllib3's Retry never sees these (requests reads the body after urlopen returns).
                    resends += 1
                    wait = min(cfg.backoff_max, cfg.backoff_factor * (2 ** (resends - 1)))
                    wait += random.random() * cfg.backoff_jitter if cfg.backoff_jitter else 0.0
                    log.info(
                        "%s %s: response body broke off (%s); sending again in %.2fs",
                        method,
                        shown,
                        type(exc).__name__,
                        wait,
                    )
                    self.sleep(max(0.0, min(cfg.backoff_max, wait)))
                    continue
                raise self._transport_error(method, shown, exc, sent=sent) from None
        from_cache = bool(getattr(resp, "from_cache", False))
        if from_cache and max_age_s is not None and _age_s(resp) > max_age_s:
            log.debug("%s %s: cached response older than %ss, fetching again", method, shown, max_age_s)
            return self._send(
                method, url, shown, params=params, headers=headers, json_body=json_body, _refresh=True
            )
        if from_cache:
            with self._lock:
                self.cache_hits[host_key(resp.url or url)] += 1
        log.debug("%s %s -> %s%s", method, shown, resp.status_code, " (cache)" if from_cache else "")
        return resp

    def _transport_error(
        self, method: str, shown: str, exc: requests.RequestException, sent: int = 0
    ) -> CatalogHTTPError:
        reason: Any = exc.args[0] if exc.args else exc
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        cfg = self.config
        attempts = sent or cfg.total_retries + 1
        if isinstance(exc, BodyTimeout):
            return CatalogHTTPError(
                f"{method} {shown}: response body not complete within {cfg.body_timeout}s of its headers "
                f"(read timeout {cfg.read_timeout}s per read) after {attempts} attempt(s)",
                url=shown,
                kind="timeout",
            )
        if isinstance(exc, ChunkedEncodingError):
            return CatalogHTTPError(
                f"{method} {shown}: connection broken mid-response after {attempts} attempt(s): "
                f"{self.redact(str(reason))}",
                url=shown,
                kind="connection",
            )
        if isinstance(reason, NewConnectionError) or (
            isinstance(exc, requests.ConnectionError)
            and not isinstance(exc, requests.Timeout)
            and not isinstance(reason, (ReadTimeoutError, ConnectTimeoutError))
        ):
            detail = self.redact(str(reason))
            return CatalogHTTPError(
                f"{method} {shown}: connection failed after {attempts} attempt(s): {detail}",
                url=shown,
                kind="connection",
            )
        if isinstance(exc, requests.Timeout) or isinstance(reason, (ReadTimeoutError, ConnectTimeoutError)):
            which = (
                "connect"
                if isinstance(exc, requests.ConnectTimeout)
                or (isinstance(reason, ConnectTimeoutError) and not isinstance(reason, ReadTimeoutError))
                else "read"
            )
            limit = cfg.connect_timeout if which == "connect" else cfg.read_timeout
            return CatalogHTTPError(
                f"{method} {shown}: {which} timed out ({limit}s) after {attempts} attempt(s)",
                url=shown,
                kind="timeout",
            )
        return CatalogHTTPError(
            self.redact(f"{method} {shown}: request failed: {type(exc).__name__}: {exc}"),
            url=shown,
            kind="connection",
        )
