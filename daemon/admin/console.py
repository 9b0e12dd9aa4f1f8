"""The web console under ``/ui/`` of every daemon's admin port.

Server-rendered HTML (Python string templates, every value through
:func:`html.escape`), one static JS file and one CSS file (``daemon/admin/ui/``),
no build toolchain.  Each page is a shell plus one *live fragment*: the page's
JS fetches ``/ui/fragment/<page>`` every few seconds and swaps it in, so the
markup is produced (and escaped) in exactly one place.  The fragments are
rendered from the same JSON documents the admin API serves (the console calls
the API in-process, so a secondary forwards to the metadata primary as for any
caller); actions (drain, snapshot, S3 keys) are the page's JS calling the JSON
API itself with the session cookie and the CSRF header.

Sessions
--------
``POST /ui/login`` with an admin token (the first-run token or a scoped one)
makes a session in :class:`SessionTable`: a random 256-bit id in the cookie
``dfs_session`` (HttpOnly, SameSite=Strict, Path=/, Secure when the admin port
is HTTPS), the token's scope, and a CSRF token the page gets in a meta tag.  The
table is in memory, bounded (:data:`MAX_SESSIONS`, oldest evicted first) and
keyed by the SHA-256 of the id, so a lookup leaks no timing about stored ids.
Sessions expire after :data:`SESSION_IDLE_S` idle or :data:`SESSION_MAX_S` in
all; a restart of the daemon ends them.  Neither the token nor the session id
is ever logged.

CSRF: a request authenticated by the cookie that is not GET/HEAD must carry
``X-CSRF-Token`` equal to its session's, and an ``Origin`` header, when
present, must name this server.  SameSite=Strict already keeps other sites'
requests cookie-less; the header check also covers same-site subdomains.

History
-------
:class:`History` is a ring buffer of :data:`HISTORY_POINTS` samples taken every
:data:`SAMPLE_INTERVAL_S` (an hour) by :meth:`Console.run`, from counters the
daemon already keeps (requests served, S3 bytes, repair bytes); the overview's
charts draw it from ``/ui/api/history``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import hmac
import html
import json
import logging
import math
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import trio

import daemon.admin.tokens as tokens
from daemon.http import BodyError, Request, Response

log = logging.getLogger("dfs.admin.console")

COOKIE_NAME = "dfs_session"
CSRF_HEADER = "x-csrf-token"
MAX_SESSIONS = 256
SESSION_IDLE_S = 30 * 60.0
SESSION_MAX_S = 12 * 3600.0
REVALIDATE_S = 30.0
_SESSION_ID_BYTES = 32  # 256 bits
_LOGIN_BODY_BYTES = 4096
SAMPLE_INTERVAL_S = 10.0
HISTORY_POINTS = 360  # an hour of 10 s samples
REFRESH_MS = 3000
# Cluster-wide repair figures are gathered from every live node over RPC: at most this often,
# however many pages poll.
_REPAIR_CACHE_S = 2.0
_REPAIR_TIMEOUT_S = 5.0
_MAX_MEMBERS_ASKED = 256
_MAX_SNAPSHOTS_SHOWN = 5

UI_DIR = Path(__file__).with_name("ui")
_STATIC_TYPES = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
}

#: No inline script or style anywhere: data reaches the JS through data- attributes and fetch.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = [
    ("content-security-policy", CSP),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    # Not no-referrer: with it Chromium sends "Origin: null" on form posts, which the origin
    # check must refuse.  same-origin still sends nothing to other sites.
    ("referrer-policy", "same-origin"),
    ("cache-control", "no-store"),
]

PAGES = ("overview", "nodes", "volumes", "s3")
_PAGE_TITLES = {"overview": "Overview", "nodes": "Nodes", "volumes": "Volumes", "s3": "S3 keys"}
_PAGE_PATHS = {"overview": "/ui/", "nodes": "/ui/nodes", "volumes": "/ui/volumes", "s3": "/ui/s3"}
# The API routes each page's fragment reads: a session whose scope may not GET one of them
# sees that part as "not allowed" (a read token has no S3 keys page).
_PAGE_ROUTES = {
    "overview": ("/storage/health", "/storage/metrics", "/storage/nodes"),
    "nodes": ("/storage/nodes",),
    "volumes": ("/storage/volumes", "/storage/snapshot"),
    "s3": ("/storage/s3/keys",),
}

ApiGet = Callable[[str], Awaitable[tuple[int, Any]]]
ScopeOf = Callable[[str], Awaitable[str | None]]
Members = Callable[[], list[dict[str, Any]]]
RepairStatus = Callable[[str], Awaitable[dict[str, Any] | None]]


class ConsoleRefused(Exception):
    """A cookie-authenticated request the console refuses (403: CSRF or Origin check failed)."""


# -- sessions ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Session:
    scope: str
    csrf: str = dataclasses.field(repr=False)
    created_s: float
    used_s: float
    # The token logged in with (memory only, never in the cookie or a log): checked again every
    # REVALIDATE_S, so revoking a token ends its console sessions too.
    token: str = dataclasses.field(default="", repr=False)
    checked_s: float = 0.0


class SessionTable:
    """Console sessions in memory: bounded, expiring, keyed by the hash of the session id."""

    def __init__(
        self,
        *,
        max_sessions: int = MAX_SESSIONS,
        idle_s: float = SESSION_IDLE_S,
        max_age_s: float = SESSION_MAX_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        assert max_sessions > 0 and idle_s > 0 and max_age_s > 0
        self.max_sessions = max_sessions
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self._clock = clock
        # Insertion order is creation order: the first entry is the oldest, evicted when full.
        self._sessions: collections.OrderedDict[bytes, Session] = collections.OrderedDict()

    @staticmethod
    def _key(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode()).digest()

    def __len__(self) -> int:
        return len(self._sessions)

    def now(self) -> float:
        """The table's clock (monotonic seconds)."""
        return self._clock()

    def create(self, scope: str, token: str = "") -> tuple[str, Session]:
        """A new session of ``scope`` logged in with ``token``: (its id, for the cookie only;
        the session)."""
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            self._sessions.popitem(last=False)
        session_id = secrets.token_urlsafe(_SESSION_ID_BYTES)
        now = self._clock()
        csrf = secrets.token_urlsafe(_SESSION_ID_BYTES)
        session = Session(scope=scope, csrf=csrf, created_s=now, used_s=now, token=token, checked_s=now)
        self._sessions[self._key(session_id)] = session
        assert len(self._sessions) <= self.max_sessions
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        """The live session with this id (its idle timer restarted), or None."""
        key = self._key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self._clock()
        if now - session.used_s > self.idle_s or now - session.created_s > self.max_age_s:
            del self._sessions[key]
            return None
        session.used_s = now
        return session

    def drop(self, session_id: str) -> None:
        self._sessions.pop(self._key(session_id), None)

    def _expire(self) -> None:
        now = self._clock()
        stale = [
            key
            for key, s in self._sessions.items()
            if now - s.used_s > self.idle_s or now - s.created_s > self.max_age_s
        ]
        for key in stale:
            del self._sessions[key]


def cookie_value(req: Request, name: str = COOKIE_NAME) -> str | None:
    """The value of cookie ``name`` in the request's Cookie header(s), if any."""
    for header, value in req.headers:
        if header != "cookie":
            continue
        for part in value.split(";"):
            key, sep, val = part.strip().partition("=")
            if sep and key == name:
                return val.strip()
    return None


# -- history ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Totals:
    """Cumulative counters at one instant (they only grow, except across a restart)."""

    ops: int
    s3_in_bytes: int
    s3_out_bytes: int
    repair_bytes: int


class History:
    """Rates over the last hour: a ring buffer of (time, per-second rates) points."""

    def __init__(self, capacity: int = HISTORY_POINTS) -> None:
        assert capacity > 1
        self.points: collections.deque[dict[str, float]] = collections.deque(maxlen=capacity)
        self._last: tuple[float, Totals] | None = None

    def sample(self, wall_s: float, mono_s: float, totals: Totals) -> None:
        """Record the rates since the previous sample (the first sample only sets the base)."""
        last = self._last
        self._last = (mono_s, totals)
        if last is None:
            return
        elapsed_s = mono_s - last[0]
        if elapsed_s <= 0:
            return

        def rate(now: int, before: int) -> float:
            return round(max(0, now - before) / elapsed_s, 3)  # a counter reset reads as 0, not negative

        prev = last[1]
        self.points.append(
            {
                "t": round(wall_s, 1),
                "ops_s": rate(totals.ops, prev.ops),
                "s3_in_bytes_s": rate(totals.s3_in_bytes, prev.s3_in_bytes),
                "s3_out_bytes_s": rate(totals.s3_out_bytes, prev.s3_out_bytes),
                "repair_bytes_s": rate(totals.repair_bytes, prev.repair_bytes),
            }
        )

    def doc(self) -> dict[str, Any]:
        return {"interval_s": SAMPLE_INTERVAL_S, "points": list(self.points)}


# -- formatting -------------------------------------------------------------------------------


def esc(value: Any) -> str:
    """Any value as HTML text (attribute-safe: quotes escaped too)."""
    return html.escape("" if value is None else str(value), quote=True)


def human_bytes(n: Any) -> str:
    if not isinstance(n, int | float) or isinstance(n, bool):
        return "—"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    s = int(seconds)
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


def _tag(status: str) -> str:
    """A status word in a coloured badge (the class names are in console.css)."""
    cls = {
        "ok": "good",
        "alive": "good",
        "active": "good",
        "degraded": "warn",
        "suspect": "warn",
        "draining": "warn",
        "down": "bad",
        "dead": "bad",
        "left": "bad",
        "out": "bad",
    }.get(status, "muted")
    return f'<span class="badge {cls}">{esc(status)}</span>'


def _table(headers: tuple[str, ...], rows: list[str], empty: str) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}" class="muted">{esc(empty)}</td></tr>'
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _button(
    label: str, method: str, url: str, body: Mapping[str, Any] | None = None, confirm: str = ""
) -> str:
    attrs = f'data-method="{esc(method)}" data-url="{esc(url)}"'
    if body is not None:
        attrs += f' data-body="{esc(json.dumps(body))}"'
    if confirm:
        attrs += f' data-confirm="{esc(confirm)}"'
    return f'<button type="button" class="action" {attrs}>{esc(label)}</button>'


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


# -- the console ------------------------------------------------------------------------------


class Console:
    """The ``/ui/`` handler of one daemon's admin API (see the module docstring)."""

    def __init__(
        self,
        *,
        node_id: str,
        https: bool,
        api_get: ApiGet,
        scope_of: ScopeOf,
        members: Members,
        repair_status: RepairStatus,
        totals: Callable[[], Awaitable[Totals]],
        loop_lag_s: Callable[[], float],
        sessions: SessionTable | None = None,
    ) -> None:
        self.node_id = node_id
        self.https = https
        self._api_get = api_get
        self._scope_of = scope_of
        self._members = members
        self._repair_status = repair_status
        self._totals = totals
        self._loop_lag_s = loop_lag_s
        self.sessions = sessions if sessions is not None else SessionTable()
        self.history = History()
        self._repair_cache: tuple[float, dict[str, Any]] | None = None
        self._repair_lock = trio.Lock()
        # The largest amount of repair work seen since the cluster was last fully repaired: the
        # progress bar's 100 %.
        self._repair_peak = 0

    @staticmethod
    def owns(path: str) -> bool:
        return path == "/ui" or path.startswith("/ui/")

    # -- the background sampler -------------------------------------------------------------
    async def run(self) -> None:
        """Sample the counters every :data:`SAMPLE_INTERVAL_S` until cancelled."""
        while True:
            try:
                totals = await self._totals()
            except Exception:  # a failed sample is a gap in a chart, never a dead daemon
                log.exception("console history sample failed")
            else:
                self.history.sample(time.time(), time.monotonic(), totals)
            await trio.sleep(SAMPLE_INTERVAL_S)

    # -- authentication for the JSON API ------------------------------------------------------
    async def session_scope(self, req: Request) -> str | None:
        """The scope of the request's console session (None: no live session).

        Raises :class:`ConsoleRefused` for a change (not GET/HEAD) without the session's CSRF
        token or from another origin."""
        session = await self._session(req)
        if session is None:
            return None
        if req.method not in ("GET", "HEAD"):
            self._check_csrf(req, session)
        return session.scope

    async def _session(self, req: Request) -> Session | None:
        """The request's live session; its token is checked again if not for REVALIDATE_S."""
        session_id = cookie_value(req)
        session = self.sessions.get(session_id) if session_id else None
        if session_id is None or session is None:
            return None
        if self.sessions.now() - session.checked_s > REVALIDATE_S:
            scope = await self._scope_of(session.token) if session.token else None
            if scope is None:  # revoked (or the first-run token was replaced): the session ends
                self.sessions.drop(session_id)
                return None
            session.scope, session.checked_s = scope, self.sessions.now()
        return session

    def _check_origin(self, req: Request) -> None:
        origin = req.header("origin")
        if origin is None:
            return
        host = req.header("host") or ""
        scheme = "https" if self.https else "http"
        if not host or origin != f"{scheme}://{host}":
            raise ConsoleRefused("request from another origin")

    def _check_csrf(self, req: Request, session: Session) -> None:
        self._check_origin(req)
        presented = req.header(CSRF_HEADER) or ""
        if not hmac.compare_digest(presented.encode(), session.csrf.encode()):
            raise ConsoleRefused("missing or wrong X-CSRF-Token")

    # -- responses ---------------------------------------------------------------------------
    @staticmethod
    def _html(status: int, body: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return Response(
            status,
            [("content-type", "text/html; charset=utf-8"), *_SECURITY_HEADERS, *(headers or [])],
            body.encode(),
        )

    @staticmethod
    def _json(status: int, doc: Any) -> Response:
        return Response(
            status,
            [("content-type", "application/json"), *_SECURITY_HEADERS],
            json.dumps(doc, separators=(",", ":")).encode() + b"\n",
        )

    @staticmethod
    def _redirect(location: str, headers: list[tuple[str, str]] | None = None) -> Response:
        return Response(303, [("location", location), *_SECURITY_HEADERS, *(headers or [])], b"")

    def _cookie(self, value: str, max_age_s: int) -> tuple[str, str]:
        secure = "; Secure" if self.https else ""
        return (
            "set-cookie",
            f"{COOKIE_NAME}={value}; Path=/; Max-Age={max_age_s}; HttpOnly; SameSite=Strict{secure}",
        )

    # -- dispatch ----------------------------------------------------------------------------
    async def handle(self, req: Request) -> Response:
        path = req.path
        if len(path) > 4 and path.endswith("/"):
            path = path.rstrip("/")
        if path.startswith("/ui/static/"):
            return self._static(req, path.removeprefix("/ui/static/"))
        if path == "/ui/login":
            if req.method in ("GET", "HEAD"):
                return self._login_page()
            if req.method == "POST":
                return await self._login(req)
            return self._method_not_allowed("GET, POST")
        session = await self._session(req)
        if path == "/ui/logout":
            if req.method != "POST":
                return self._method_not_allowed("POST")
            if session is not None:
                try:
                    self._check_csrf(req, session)
                except ConsoleRefused as exc:
                    return self._json(403, {"error": {"code": "Forbidden", "message": str(exc)}})
                session_id = cookie_value(req)
                if session_id:
                    self.sessions.drop(session_id)
            return self._redirect("/ui/login", [self._cookie("", 0)])
        if session is None:
            if path.startswith(("/ui/fragment/", "/ui/api/")):
                return self._json(401, {"error": {"code": "Unauthorized", "message": "log in first"}})
            return self._redirect("/ui/login")
        if req.method not in ("GET", "HEAD"):
            return self._method_not_allowed("GET")
        for page, page_path in _PAGE_PATHS.items():
            if path == page_path.rstrip("/") or path == page_path:
                return await self._page(page, session)
        if path.startswith("/ui/fragment/"):
            page = path.removeprefix("/ui/fragment/")
            if page in PAGES:
                return self._html(200, await self._fragment(page, session))
        if path == "/ui/api/history":
            return self._json(200, self.history.doc())
        return self._html(404, self._shell("Not found", "", session, '<p class="muted">No such page.</p>'))

    def _method_not_allowed(self, allow: str) -> Response:
        return Response(405, [("allow", allow), ("content-type", "text/plain"), *_SECURITY_HEADERS], b"")

    def _static(self, req: Request, name: str) -> Response:
        content_type = _STATIC_TYPES.get(name)
        if content_type is None or req.method not in ("GET", "HEAD"):
            return Response(404, [("content-type", "text/plain"), *_SECURITY_HEADERS], b"not found\n")
        body = (UI_DIR / name).read_bytes()  # a few KiB from the page cache: not worth a thread
        headers = [(k, v) for k, v in _SECURITY_HEADERS if k != "cache-control"]
        return Response(200, [("content-type", content_type), ("cache-control", "no-cache"), *headers], body)

    # -- login -------------------------------------------------------------------------------
    def _login_page(self, error: str = "", status: int = 200) -> Response:
        message = f'<p class="error" role="alert">{esc(error)}</p>' if error else ""
        body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dfs console · log in</title>
<link rel="stylesheet" href="/ui/static/console.css">
<link rel="icon" href="data:,">
</head><body class="login">
<main class="login-box">
<h1>dfs console</h1>
<p class="muted">Node {esc(self.node_id)}</p>
{message}
<form method="post" action="/ui/login" id="login-form">
<label for="token">Admin token</label>
<input type="password" id="token" name="token" autocomplete="current-password" required>
<button type="submit" id="login">Log in</button>
</form>
<p class="muted small">The first-run token is <code>admin.token</code> in the data directory;
<code>dfs admin token create --scope read</code> makes a read-only one.</p>
</main></body></html>"""
        return self._html(status, body)

    async def _login(self, req: Request) -> Response:
        try:
            self._check_origin(req)
        except ConsoleRefused:
            return self._login_page("Refused: the login form was posted from another site.", 403)
        try:
            raw = await req.read_body(_LOGIN_BODY_BYTES)
        except BodyError as exc:
            return self._login_page(exc.message, exc.status)
        try:
            form = urllib.parse.parse_qs(raw.decode("ascii"), max_num_fields=4, strict_parsing=False)
        except (UnicodeDecodeError, ValueError):
            return self._login_page("Malformed form.", 400)
        presented = (form.get("token") or [""])[0].strip()
        scope = await self._scope_of(presented) if presented else None
        if scope is None:
            log.info("console login refused from %s", req.remote)  # never the token itself
            return self._login_page("That token is not valid here.", 401)
        session_id, _ = self.sessions.create(scope, presented)
        log.info("console login (%s scope) from %s", scope, req.remote)
        return self._redirect("/ui/", [self._cookie(session_id, int(self.sessions.max_age_s))])

    # -- pages -------------------------------------------------------------------------------
    def _shell(self, title: str, page: str, session: Session, content: str) -> str:
        nav = "".join(
            f'<a href="{esc(_PAGE_PATHS[p])}"{" aria-current=page" if p == page else ""}>'
            f"{esc(_PAGE_TITLES[p])}</a>"
            for p in PAGES
        )
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="csrf-token" content="{esc(session.csrf)}">
<title>{esc(title)} · dfs {esc(self.node_id)}</title>
<link rel="stylesheet" href="/ui/static/console.css">
<link rel="icon" href="data:,">
<script src="/ui/static/console.js" defer></script>
</head><body data-page="{esc(page)}">
<header class="top">
<a class="brand" href="/ui/">dfs</a>
<nav>{nav}</nav>
<span class="who">{esc(self.node_id)} · {esc(session.scope)}</span>
<button type="button" id="logout">Log out</button>
</header>
<div id="flash" role="status" aria-live="polite"></div>
<main>
<h1>{esc(title)}</h1>
{content}
</main>
</body></html>"""

    async def _page(self, page: str, session: Session) -> Response:
        live = (
            f'<section id="live" data-fragment="/ui/fragment/{esc(page)}" data-refresh-ms="{REFRESH_MS}">'
            f"{await self._fragment(page, session)}</section>"
        )
        admin = session.scope == "admin"
        extra = ""
        if page == "overview":
            extra = (
                '<section class="charts"><h2>Last hour</h2><div class="grid">'
                "<figure><figcaption>Operations/s</figcaption>"
                '<svg class="chart" id="chart-ops" data-series="ops_s" data-unit="ops" '
                'viewBox="0 0 300 100" preserveAspectRatio="none" role="img" '
                'aria-label="operations per second">'
                "</svg></figure>"
                '<figure><figcaption>Throughput: <span class="legend-0">S3 in</span> · '
                '<span class="legend-1">S3 out</span> · <span class="legend-2">repair</span></figcaption>'
                '<svg class="chart" id="chart-bytes" '
                'data-series="s3_in_bytes_s s3_out_bytes_s repair_bytes_s" '
                'data-unit="bytes" viewBox="0 0 300 100" preserveAspectRatio="none" role="img" '
                'aria-label="bytes per second"></svg></figure>'
                '</div><p class="muted small" id="chart-note">Sampled every '
                f"{SAMPLE_INTERVAL_S:g} s by this node.</p></section>"
            )
        elif page == "volumes" and admin:
            vols, _ = await self._get("/storage/volumes")
            options = "".join(
                f'<option value="{esc(v["name"])}">{esc(v["name"])}</option>'
                for v in (vols or {}).get("volumes", [])
            )
            extra = (
                "<section><h2>Create a snapshot</h2>"
                '<form class="api-form" id="snapshot-form" data-method="POST" data-url="/storage/snapshot" '
                'data-kind="snapshot">'
                f'<label>Volume <select name="volume" required>{options}</select></label>'
                '<label>Name <input name="name" placeholder="(timestamp)"></label>'
                '<button type="submit">Create snapshot</button></form></section>'
            )
        elif page == "s3" and admin:
            extra = (
                "<section><h2>Create a key</h2>"
                '<form class="api-form" id="s3key-form" data-method="POST" data-url="/storage/s3/keys" '
                'data-kind="s3key">'
                '<label>Description <input name="description" maxlength="256"></label>'
                '<label>Bucket <input name="bucket" placeholder="(none)"></label>'
                '<label>Permission <select name="perm"><option>r</option><option>w</option>'
                "<option selected>rw</option><option>owner</option></select></label>"
                '<button type="submit">Create key</button></form>'
                '<div id="secret" class="secret" hidden></div></section>'
                "<section><h2>Grant a key access to a bucket</h2>"
                '<form class="api-form" id="grant-form" data-method="PUT" data-kind="grant">'
                '<label>Access key <input name="access_key" required></label>'
                '<label>Bucket <input name="bucket" required></label>'
                '<label>Permission <select name="perm"><option>r</option><option>w</option>'
                "<option selected>rw</option><option>owner</option></select></label>"
                '<button type="submit">Grant</button></form></section>'
            )
        content = live + extra if page != "volumes" else extra + live
        return self._html(200, self._shell(_PAGE_TITLES[page], page, session, content))

    async def _fragment(self, page: str, session: Session) -> str:
        if not all(tokens.allowed(session.scope, "GET", route) for route in _PAGE_ROUTES[page]):
            return f'<p class="muted">A {esc(session.scope)} token may not see this page.</p>'
        admin = tokens.allowed(session.scope, "PUT", "/storage/nodes/{node_id}")
        if page == "overview":
            return await self._overview()
        if page == "nodes":
            return await self._nodes(admin)
        if page == "volumes":
            return await self._volumes()
        return await self._s3_keys(admin)

    async def _get(self, target: str) -> tuple[Any, str]:
        """(the API's JSON answer, "") or (None, an error message to show)."""
        status, doc = await self._api_get(target)
        if 200 <= status < 300 or (target == "/storage/health" and status == 503):
            return doc, ""
        message = doc.get("error", {}).get("message", "") if isinstance(doc, dict) else ""
        return None, f"{target}: {status} {message}"

    # -- cluster figures ---------------------------------------------------------------------
    async def cluster_repair(self) -> dict[str, Any]:
        """Every live member's repair counters summed, with a rate, an ETA and a progress
        fraction; cached for :data:`_REPAIR_CACHE_S` so polling pages cost few RPCs."""
        async with self._repair_lock:
            now = time.monotonic()
            if self._repair_cache is not None and now - self._repair_cache[0] < _REPAIR_CACHE_S:
                return self._repair_cache[1]
            members = [m for m in self._members() if m.get("status") in ("alive", "suspect")]
            statuses: list[dict[str, Any]] = []
            unreachable: list[str] = []

            async def ask(node_id: str) -> None:
                with trio.move_on_after(_REPAIR_TIMEOUT_S):
                    got = await self._repair_status(node_id)
                    if got is not None:
                        statuses.append(got)
                        return
                unreachable.append(node_id)

            async with trio.open_nursery() as nursery:
                for m in members[:_MAX_MEMBERS_ASKED]:
                    nursery.start_soon(ask, str(m["node_id"]))
            keys = ("under_replicated", "misplaced", "hints_pending", "copies_made", "bytes_moved")
            doc: dict[str, Any] = {k: sum(int(s.get(k, 0) or 0) for s in statuses) for k in keys}
            pending = doc["under_replicated"] + doc["misplaced"] + doc["hints_pending"]
            rate = sum(float(s.get("copies_rate_s", 0.0) or 0.0) for s in statuses)
            self._repair_peak = max(self._repair_peak, pending) if pending else 0
            doc.update(
                pending=pending,
                copies_rate_s=round(rate, 2),
                eta_s=pending / rate if pending and rate > 0 else None,
                progress=1.0 - pending / self._repair_peak if self._repair_peak else 1.0,
                nodes_reporting=len(statuses),
                unreachable=sorted(unreachable),
            )
            self._repair_cache = (time.monotonic(), doc)
            return doc

    def _repair_html(self, rep: dict[str, Any]) -> str:
        pending = int(rep["pending"])
        state = "in progress" if pending else "nothing to repair"
        pct = round(100 * float(rep["progress"]))
        bar = f'<progress id="repair-progress" max="100" value="{pct}">{pct} %</progress>' if pending else ""
        unreachable = (
            f'<p class="warn-text">Not answering: {esc(", ".join(rep["unreachable"]))}</p>'
            if rep["unreachable"]
            else ""
        )
        return f"""<div class="card" id="repair">
<h2>Repair</h2>
<p><span class="badge {"warn" if pending else "good"}" id="repair-state">{esc(state)}</span></p>
{bar}
<dl>
<dt>Pending</dt><dd id="repair-pending">{pending}</dd>
<dt>Under-replicated</dt><dd>{esc(rep["under_replicated"])}</dd>
<dt>Misplaced</dt><dd>{esc(rep["misplaced"])}</dd>
<dt>Hints pending</dt><dd>{esc(rep["hints_pending"])}</dd>
<dt>Copies made</dt><dd id="repair-copies">{esc(rep["copies_made"])}</dd>
<dt>Bytes moved</dt><dd>{esc(human_bytes(rep["bytes_moved"]))}</dd>
<dt>Rate</dt><dd>{esc(rep["copies_rate_s"])} copies/s</dd>
<dt>ETA</dt><dd id="repair-eta">{esc(human_duration(rep["eta_s"]))}</dd>
</dl>{unreachable}</div>"""

    async def _overview(self) -> str:
        health, health_err = await self._get("/storage/health")
        stats, stats_err = await self._get("/storage/metrics")
        layout, _ = await self._get("/storage/nodes")
        states = {str(n["node_id"]): str(n.get("state")) for n in (layout or {}).get("nodes", [])}
        members = self._members()
        rep = await self.cluster_repair()
        parts: list[str] = ['<div class="grid">']
        if health is not None:
            failing = [c for c in health.get("checks", []) if not c.get("ok")]
            reasons = "".join(f"<li>{esc(c.get('name'))}: {esc(c.get('detail'))}</li>" for c in failing)
            down = [m for m in members if m.get("status") not in ("alive",)]
            reasons += "".join(
                f"<li>node {esc(m.get('node_id'))} is {esc(m.get('status'))}</li>" for m in down
            )
            status = str(health.get("status", "unknown"))
            if status == "ok" and down:
                status = "degraded"
            parts.append(
                f'<div class="card" id="health"><h2>Health</h2><p>{_tag(status)}</p>'
                f'<ul class="reasons">{reasons or "<li>all checks pass</li>"}</ul></div>'
            )
        else:
            parts.append(f'<div class="card"><h2>Health</h2><p class="error">{esc(health_err)}</p></div>')
        total = sum(int(m.get("capacity_bytes", 0) or 0) for m in members if m.get("status") == "alive")
        free = sum(int(m.get("free_bytes", 0) or 0) for m in members if m.get("status") == "alive")
        used_pct = round(100 * (total - free) / total) if total else 0
        counts = (stats or {}).get("namespace", {})
        parts.append(
            f"""<div class="card" id="capacity"><h2>Capacity</h2>
<meter min="0" max="100" value="{used_pct}" high="85" optimum="0">{used_pct} %</meter>
<dl><dt>Used</dt><dd>{esc(human_bytes(total - free))} of {esc(human_bytes(total))} ({used_pct} %)</dd>
<dt>Free</dt><dd>{esc(human_bytes(free))}</dd>
<dt>Files</dt><dd id="files">{esc(counts.get("files", "—"))}</dd>
<dt>Directories</dt><dd>{esc(counts.get("dirs", "—"))}</dd>
<dt>Logical data</dt><dd>{esc(human_bytes(counts.get("logical_bytes")))}</dd>
<dt>Stored</dt><dd>{esc(human_bytes(counts.get("stored_bytes")))}</dd></dl>
{f'<p class="error">{esc(stats_err)}</p>' if stats_err else ""}</div>"""
        )
        by_status: dict[str, int] = {}
        for m in members:
            by_status[str(m.get("status"))] = by_status.get(str(m.get("status")), 0) + 1
        summary = " ".join(f"{_tag(s)} {n}" for s, n in sorted(by_status.items()))
        parts.append(
            f'<div class="card" id="members"><h2>Nodes</h2><p>{summary}</p>'
            '<ul class="plain">'
            + "".join(
                f"<li>{_tag(str(m.get('status')))} {esc(m.get('node_id'))}"
                + (f" {_tag(states[m['node_id']])}" if states.get(m["node_id"], "active") != "active" else "")
                + "</li>"
                for m in members
            )
            + '</ul><p><a href="/ui/nodes">All nodes →</a></p></div>'
        )
        parts.append(self._repair_html(rep))
        parts.append("</div>")
        return "".join(parts)

    async def _nodes(self, admin: bool) -> str:
        layout, err = await self._get("/storage/nodes")
        members = {str(m["node_id"]): m for m in self._members()}
        rows: list[str] = []
        listed = [n for n in (layout or {}).get("nodes", [])]
        known = {str(n["node_id"]) for n in listed}
        # Members gossip knows of but the layout does not (yet): shown too, without actions.
        listed += [{"node_id": node_id, "gossip_only": True} for node_id in sorted(set(members) - known)]
        for n in listed:
            node_id = str(n["node_id"])
            m = members.get(node_id, {})
            gossip = str(m.get("status", "unknown"))
            since = human_duration(m.get("for_s")) if m else "—"
            state = str(n.get("state", "—"))
            cap = m.get("capacity_bytes")
            free = m.get("free_bytes")
            lag = f"{self._loop_lag_s() * 1e3:.1f} ms" if node_id == self.node_id else "—"
            load = f"{m['cpu_percent']} % CPU" if isinstance(m.get("cpu_percent"), int | float) else "—"
            actions = ""
            if admin and not n.get("gossip_only"):
                url = "/storage/nodes/" + _quote(node_id)
                if state == "draining":
                    actions = _button("Undrain", "PUT", url, {"state": "active"})
                elif state == "active":
                    actions = _button(
                        "Drain",
                        "PUT",
                        url,
                        {"state": "draining"},
                        f"Drain {node_id}? Its chunks move to the other nodes.",
                    )
            rows.append(
                f'<tr data-node="{esc(node_id)}"><td>{esc(node_id)}</td>'
                f'<td class="gossip">{_tag(gossip)} <span class="muted small">{esc(since)}</span></td>'
                f'<td class="state">{_tag(state)}</td><td>{esc(n.get("zone", m.get("zone", "—")))}</td>'
                f"<td>{esc(n.get('capacity_weight', '—'))}</td>"
                f"<td>{esc(human_bytes(free))} of {esc(human_bytes(cap))}</td>"
                f"<td>{esc(load)}</td><td>{esc(lag)}</td><td>{actions}</td></tr>"
            )
        table = _table(
            ("Node", "Gossip", "Layout", "Zone", "Weight", "Free", "Load", "Loop lag", ""),
            rows,
            "no nodes",
        )
        error = f'<p class="error">{esc(err)}</p>' if err else ""
        rep = self._repair_html(await self.cluster_repair())
        note = '<p class="muted small">Loop lag is measured on the node serving this page.</p>'
        return f"{error}{table}{note}{rep}"

    async def _volumes(self) -> str:
        vols, err = await self._get("/storage/volumes")
        snaps, snap_err = await self._get("/storage/snapshot")
        by_volume: dict[str, list[dict[str, Any]]] = {}
        for s in (snaps or {}).get("snapshots", []):
            by_volume.setdefault(str(s["volume"]), []).append(s)
        rows: list[str] = []
        for v in (vols or {}).get("volumes", []):
            name = str(v["name"])
            pol = v.get("policy", {})
            usage = v.get("usage", {})
            used = usage.get("bytes")
            quota = pol.get("quota_bytes")
            meter = ""
            if isinstance(quota, int) and quota > 0 and isinstance(used, int):
                meter = (
                    f'<meter min="0" max="{quota}" value="{min(used, quota)}" '
                    f'high="{int(quota * 0.9)}"></meter>'
                )
            quota_text = f" of {human_bytes(quota)}" if isinstance(quota, int) else " (no quota)"
            mine = sorted(by_volume.get(name, []), key=lambda s: int(s.get("created_ns", 0)), reverse=True)
            snap_list = "".join(
                f'<li>{esc(s["name"])} <span class="muted small">{esc(s["created"])}</span></li>'
                for s in mine[:_MAX_SNAPSHOTS_SHOWN]
            )
            more = (
                f'<li class="muted">and {len(mine) - _MAX_SNAPSHOTS_SHOWN} more</li>' if len(mine) > 5 else ""
            )
            policy = (
                f"R={esc(pol.get('replication'))} ({esc(pol.get('replication_source'))}), "
                f"{esc(pol.get('consistency'))}, {esc(pol.get('compression'))}"
                + (", encrypted" if pol.get("encryption") else "")
            )
            rows.append(
                f'<tr data-volume="{esc(name)}"><td>{esc(name)}</td><td>{policy}</td>'
                f"<td>{esc(human_bytes(used))}{esc(quota_text)} {meter}<br>"
                f'<span class="muted small">{esc(usage.get("inodes", "—"))} inodes</span></td>'
                f"<td>{esc(pol.get('snapshot_schedule') or 'none')}</td>"
                f'<td><span class="count">{len(mine)}</span>'
                f'<ul class="plain small">{snap_list}{more}</ul></td></tr>'
            )
        errors = "".join(f'<p class="error">{esc(e)}</p>' for e in (err, snap_err) if e)
        return errors + _table(
            ("Volume", "Policy", "Usage", "Snapshot schedule", "Snapshots"), rows, "no volumes yet"
        )

    async def _s3_keys(self, admin: bool) -> str:
        keys, err = await self._get("/storage/s3/keys")
        rows: list[str] = []
        for k in (keys or {}).get("keys", []):
            access_key = str(k["access_key"])
            grants = "".join(
                f"<li>{esc(bucket)}: {esc(perm)} "
                + (
                    _button(
                        "Revoke grant",
                        "DELETE",
                        f"/storage/s3/keys/{_quote(access_key)}/grants/{_quote(str(bucket))}",
                    )
                    if admin
                    else ""
                )
                + "</li>"
                for bucket, perm in sorted(k.get("grants", {}).items())
            )
            action = (
                _button(
                    "Revoke",
                    "DELETE",
                    "/storage/s3/keys/" + _quote(access_key),
                    None,
                    f"Revoke {access_key}? Clients using it stop working.",
                )
                if admin
                else ""
            )
            rows.append(
                f'<tr data-key="{esc(access_key)}"><td><code>{esc(access_key)}</code></td>'
                f'<td class="desc">{esc(k.get("description"))}</td><td>{esc(k.get("created"))}</td>'
                f'<td><ul class="plain small">{grants or "<li class=muted>none</li>"}</ul></td>'
                f"<td>{action}</td></tr>"
            )
        error = f'<p class="error">{esc(err)}</p>' if err else ""
        return error + _table(("Access key", "Description", "Created", "Grants", ""), rows, "no S3 keys")
