#!/usr/bin/env python3
"""Bounded soak of a jwks-sidecar release binary (driven by soak/run.sh; see soak/README.md).

The IdP is the project's own fake, `<binary> idp` (src/demo/idp.rs): a child process driven
through its control API. This script keeps the schedule (ES256 keys rotated every cycle,
failure windows set at their boundaries), a rate-limited client and the report; a second
Python process is the echo upstream. Every response is recorded and judged; RSS and fds of
the sidecar are sampled. Everything binds 127.0.0.1, every loop is bounded, and only the
processes started here are stopped (by pid).
"""
import argparse
import base64
import collections
import gzip
import hashlib
import hmac
import http.client
import http.server
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request

AUD = "api://soak"
MiB = 1024 * 1024
FAIL_KINDS = ["500", "timeout", "garbage", "too_large"]
# Garbage bodies: one per garbage sub-window, in turn across the failure windows (window w
# serves GARBAGE[w % 4]; the old in-process IdP drew one at random per request).
GARBAGE = ["<html>oops</html>", '{"keys": "nope"}', '{"keys": [', "\x00\xff" * 50]
# The IdP's failure knobs when healthy: control endpoint -> body (set in this order).
HEALTHY = {"raw_body": {}, "delay": {"ms": 0}, "fail": {"status": 0}}


def b64(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hs256(header, claims, secret):
    h = b64(json.dumps(header, separators=(",", ":")))
    p = b64(json.dumps(claims, separators=(",", ":")))
    return f"{h}.{p}.{b64(hmac.new(secret, f'{h}.{p}'.encode(), hashlib.sha256).digest())}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_json_line(proc, timeout, what):
    """The first stdout line of `proc` as JSON, within `timeout` seconds; raises otherwise."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RuntimeError(f"{what}: no JSON line on stdout within {timeout:.0f} s")
        ready, _, _ = select.select([fd], [], [], min(left, 0.5))
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"{what}: exited (status {proc.wait(5)}) before its JSON line")
            buf += chunk
        elif proc.poll() is not None:
            raise RuntimeError(f"{what}: exited (status {proc.returncode}) before its JSON line")
    line = buf.split(b"\n", 1)[0]
    try:
        return json.loads(line)
    except ValueError:
        raise RuntimeError(f"{what}: not a JSON line: {line[:200]!r}") from None


class Key:
    """The driver's view of one IdP signing key: when the client started signing with it,
    when the IdP stopped publishing it, and its pool of reused good tokens."""

    def __init__(self, kid):
        self.kid = kid
        self.published_at = None
        self.dropped_at = None
        self.pool = []  # (token, sub), minted before the key is used (exercises the token cache)


class IdP:
    """`<binary> idp` as a child process, and the schedule that drives it: rotation every
    cycle, old keys dropped at mid-cycle, failure windows. The keys live in the IdP; `keys`
    mirrors them for the client and the judge."""

    def __init__(self, binary, cycle, quiet, stderr):
        self.cycle = cycle
        self.quiet = quiet
        self.lock = threading.Lock()
        self.local = threading.local()  # one keep-alive connection to the IdP per thread
        self.keys = []            # every key ever made, oldest first
        self.n = 0
        self.t0 = time.monotonic()
        self.state = None         # the failure kind currently set (None: healthy)
        self.knobs = dict(HEALTHY)
        self.segments = []        # (t, state, jwks_fetches when it was set)
        self.log = []             # what the schedule did, when (the report's idp_log)
        self.errors = []          # failed control or mint calls: the run fails
        self.on_new_key = None    # the client's pre-minting, run before a new key is used
        self.proc = subprocess.Popen([binary, "idp", "--alg", "ES256", "--port", "0"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=stderr)
        self.issuer = self.jwks_uri = self.host = self.port = None

    def wait_ready(self, timeout=30):
        info = read_json_line(self.proc, timeout, f"{self.proc.args[0]} idp")
        self.issuer, self.jwks_uri = info["issuer"], info["jwks_uri"]
        u = urllib.parse.urlsplit(self.issuer)
        self.host, self.port = u.hostname, u.port

    def call(self, method, path, body=None):
        """One request; the body text of a 200, else raises. Control changes (not all may run
        twice) get a connection each; tokens and stats use this thread's keep-alive
        connection, retried once when it went stale."""
        once = method == "POST" and path.startswith("/control/")
        for attempt in (1, 2):
            conn = None if once else getattr(self.local, "conn", None)
            if conn is None:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                if not once:
                    self.local.conn = conn
            try:
                conn.request(method, path, body=None if body is None else json.dumps(body),
                             headers={"content-type": "application/json"})
                r = conn.getresponse()
                text = r.read().decode("utf-8", "replace")
                break
            except (OSError, http.client.HTTPException):
                conn.close()  # reconnects on its next request
                if once or attempt == 2:
                    raise
            finally:
                if once:
                    conn.close()
        if r.status != 200:
            raise RuntimeError(f"IdP {method} {path}: {r.status} {text.strip()[:200]}")
        return text

    def control(self, name, body):
        """POST /control/<name>; returns the IdP's stats after it."""
        return json.loads(self.call("POST", f"/control/{name}", body))

    def stats(self):
        return json.loads(self.call("GET", "/control/stats"))

    def mint(self, kid, claims, header=None):
        """POST /token: exactly `claims`, signed by `kid`, `header` merged over the default."""
        body = {"kid": kid, "claims": claims}
        if header:
            body["header"] = header
        return self.call("POST", "/token", body)

    def error(self, what):
        with self.lock:
            if len(self.errors) < 50:
                self.errors.append(f"t={self.now():.1f}s {what}")
        print(f"soak: IdP error: {what}", file=sys.stderr, flush=True)

    def now(self):
        return time.monotonic() - self.t0

    def note(self, event, detail, stats):
        with self.lock:
            self.log.append({"t": round(self.now(), 3), "event": event, "detail": detail,
                             "jwks_fetches": stats["jwks_fetches"],
                             "published": stats["published"]})

    def setup(self):
        """Before the sidecar starts: the key "stray" (signs the unknown-kid flood, out of the
        JWKS before the sidecar starts; it replaces the start key es256-1), ETag/304 and
        max-age=5 on the JWKS, and the first key soak-1."""
        self.control("rotate", {"alg": "ES256", "kid": "stray", "keep_old": False})
        self.control("unpublish", {"kids": ["stray"]})
        self.control("etag", {"enabled": True})
        self.control("jwks_headers", {"cache-control": "max-age=5"})
        self.rotate()

    def begin(self):
        """Restarts the clock for the run: the current key counts as published now, and JWKS
        fetches are counted from zero (the sidecar's start-up fetches count as healthy)."""
        with self.lock:
            shift = time.monotonic() - self.t0
            self.t0 += shift
            for e in self.log:
                e["t"] = round(e["t"] - shift, 3)  # set-up events get negative times
            self.keys[-1].published_at = 0.0
            self.segments = [(0.0, "ok", 0)]

    def rotate(self):
        """A new key, published first in the JWKS; the client signs with it once its tokens
        are minted (published_at is that moment)."""
        kid = f"soak-{self.n + 1}"
        stats = self.control("rotate", {"alg": "ES256", "kid": kid, "keep_old": True})
        key = Key(kid)
        started = time.monotonic()
        if self.on_new_key:
            self.on_new_key(key)
        with self.lock:
            key.published_at = self.now()
            self.keys.append(key)
            self.n += 1
        self.note("rotate", {"kid": kid, "mint_s": round(time.monotonic() - started, 3)}, stats)

    def drop_old(self):
        """Every key but the newest leaves the JWKS (they still sign: retired-key tokens)."""
        with self.lock:
            old = [k for k in self.keys[:-1] if k.dropped_at is None]
            for k in old:
                # Marked before the IdP drops them: from now on the judge accepts 200 or 401.
                k.dropped_at = self.now()
        if old:
            stats = self.control("unpublish", {"kids": [k.kid for k in old]})
            self.note("drop", [k.kid for k in old], stats)

    def published(self):
        with self.lock:
            return [k for k in self.keys if k.dropped_at is None]

    def current(self):
        with self.lock:
            return self.keys[-1]

    def failure_kind(self, t=None):
        """Failure windows: 60%..90% of every other cycle (never near a rotation)."""
        t = self.now() if t is None else t
        k, phase = divmod(t, self.cycle)
        if int(k) % 2 == 1 and 0.6 * self.cycle <= phase < 0.9 * self.cycle:
            # Four kinds in turn within the window (each for 7.5% of the cycle).
            sub = int((phase - 0.6 * self.cycle) // (0.075 * self.cycle))
            return FAIL_KINDS[(int(k) // 2 + sub) % 4]
        return None

    def set_failure(self, kind, window):
        """Puts the IdP in the state of failure `kind` (None: healthy) through the control
        API. What breaks is set before what heals, so a boundary never serves the good set."""
        want = dict(HEALTHY, **{
            None: {}, "500": {"fail": {"status": 500}},
            "timeout": {"delay": {"ms": 5000}, "raw_body": {"body": '{"keys": []}'}},
            "garbage": {"raw_body": {"body": GARBAGE[window % len(GARBAGE)]}},
            "too_large": {"raw_body": {"size": 2 * MiB}}}[kind])
        changed = [n for n in HEALTHY if want[n] != self.knobs[n]]
        done = [self.control(n, want[n]) for n in sorted(changed, key=lambda n:
                                                         want[n] == HEALTHY[n])]
        stats = done[0] if done else self.stats()  # the fetch count when the state changed
        self.knobs = want
        with self.lock:
            self.state = kind
            self.segments.append((self.now(), kind or "ok", stats["jwks_fetches"]))
        self.note("state", kind or "ok", stats)

    def flood_allowed(self, t=None):
        """Unknown-kid traffic is paused around the rotations of even cycles, so those
        rotations test the kid-miss refetch without a competing flood."""
        t = (self.now() if t is None else t) + self.quiet
        k, phase = divmod(t, self.cycle)
        return not (int(k) % 2 == 0 and phase < 2 * self.quiet)

    def schedule(self, stop, deadline):
        """Schedule thread: a new key at every cycle start, the old keys dropped at mid-cycle,
        and the IdP's state following failure_kind (set at each sub-window's boundary)."""
        while not stop.wait(0.05) and time.monotonic() < deadline:
            t = self.now()
            try:
                if t >= self.n * self.cycle:
                    self.rotate()
                elif t >= (self.n - 0.5) * self.cycle:
                    self.drop_old()
                kind = self.failure_kind(t)
                if kind != self.state:
                    self.set_failure(kind, int(t // self.cycle) // 2)
            except Exception as e:
                self.error(f"schedule: {e}")
                stop.wait(1)

    def answers(self, total_fetches, sidecar_results):
        """The report's "IdP answers". The old in-process IdP counted each answer as it chose
        it per request. Now JWKS requests are counted by the IdP (jwks_fetches, read at every
        state change) and attributed to the state the schedule had set when they arrived;
        the healthy ones are split into ok and not_modified by the sidecar's own
        jwks_fetch_total{result="not_modified"} (a 304 only happens while healthy: failure
        answers are a 500, or a body whose ETag never matches the good set's)."""
        by = {k: 0 for k in ["ok", "not_modified"] + FAIL_KINDS}
        with self.lock:
            segs = list(self.segments)
        for (t, state, n0), nxt in zip(segs, segs[1:] + [(None, None, total_fetches)]):
            by[state] += max(0, nxt[2] - n0)
        by["not_modified"] = min(by["ok"], sidecar_results.get("not_modified", 0))
        by["ok"] -= by["not_modified"]
        return by


def echo_main(port):
    """The upstream: answers every request with its method, path and headers as JSON."""

    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def setup(self):
            super().setup()
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def handle_any(self):
            n = int(self.headers.get("content-length") or 0)
            if n:
                self.rfile.read(min(n, MiB))
            body = json.dumps({"path": self.path, "headers": [[k.lower(), v] for k, v in
                                                               self.headers.items()]}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_DELETE = handle_any

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    srv.daemon_threads = True
    srv.serve_forever()


class Client:
    """Mixed traffic at a bounded rate; judges each response. Its tokens come from the IdP's
    POST /token, minted ahead so no request waits for the IdP: at each rotation (before the
    new key is used) a pool of 50 reused good tokens and a first batch of single-use tokens,
    then the minter thread keeps AHEAD single-use tokens ready per class. `alg: none`, HS256
    and bad-signature tokens are made here."""

    WEIGHTS = [("good_current", 36), ("good_previous", 8), ("good_fresh", 7), ("expired", 7),
               ("bad_signature", 7), ("unknown_kid", 10), ("spoofed_headers", 6),
               ("public", 5), ("public_spoofed", 2), ("no_token", 3), ("wrong_audience", 2),
               ("alg_none", 1), ("unknown_issuer", 1), ("retired_key", 3), ("alg_confusion", 2)]
    # Each request of these classes takes a token of its own, as when the driver signed
    # them itself: fresh good tokens are cache misses, flood kids are random.
    SINGLE_USE = ("good_fresh", "expired", "wrong_audience", "unknown_issuer", "unknown_kid")
    AHEAD = 100   # single-use tokens kept ready per class
    PRIME = 10    # minted for a new key before the client uses it
    POOL = 50     # reused good tokens per key

    def __init__(self, idp, proxy_port, args, out):
        self.idp = idp
        self.port = proxy_port
        self.args = args
        self.out = out
        self.lock = threading.Lock()
        self.stats = {}
        self.wrong = []
        self.tolerated = {}
        self.total = 0
        self.latencies = []
        self.queues = {}   # (class, kid) -> deque of (token, sub), minted ahead
        self.starved = {}  # class -> requests that found their queue dry
        self.minted = 0
        names, weights = zip(*self.WEIGHTS)
        self.names, self.weights = names, weights
        self.revoke_after = max(40.0, 1.25 * idp.cycle + 15)
        self.kidmiss_grace = args.kid_miss_interval + args.kid_miss_wait + 1.5

    def claims(self, sub, **over):
        now = int(time.time())
        c = {"iss": self.idp.issuer, "sub": sub, "aud": AUD, "iat": now, "exp": now + 900}
        c.update(over)
        return c

    def make(self, cls, key, rng):
        """One single-use token of class `cls` for `key`, minted by the IdP: (token, sub)."""
        now = int(time.time())
        kid, header, sub = key.kid, None, None
        if cls == "good_fresh":
            sub = f"fresh-{rng.randrange(1 << 30)}"
            claims = self.claims(sub, jti=str(rng.random()))
        elif cls == "expired":
            claims = self.claims("late", iat=now - 7200, exp=now - 3600)
        elif cls == "wrong_audience":
            claims = self.claims("x", aud="api://other")
        elif cls == "unknown_issuer":
            claims = self.claims("x", iss="https://evil.example/")
        else:  # unknown_kid: a random kid, signed by "stray" (never published)
            kid, header = "stray", {"kid": f"flood-{rng.randrange(1 << 40):x}"}
            claims = self.claims("flood")
        tok = self.idp.mint(kid, claims, header)
        with self.lock:
            self.minted += 1
        return tok, sub

    @staticmethod
    def queue_of(cls, kid):
        return (cls, "stray" if cls == "unknown_kid" else kid)

    def prepare_key(self, key):
        """IdP.on_new_key: the key's good-token pool and a first batch of its single-use
        tokens (and of the flood's), before the client signs with it; older queues go."""
        rng = random.Random(key.kid)
        key.pool = [(self.idp.mint(key.kid, self.claims(f"user-{key.kid}-{i}")),
                     f"user-{key.kid}-{i}") for i in range(self.POOL)]
        fresh = {self.queue_of(cls, key.kid): collections.deque(
            self.make(cls, key, rng) for _ in range(self.PRIME)) for cls in self.SINGLE_USE}
        keep = {key.kid, self.idp.current().kid} if self.idp.keys else {key.kid}
        with self.lock:
            self.queues = {q: d for q, d in self.queues.items() if q[1] in keep}
            self.queues.update(fresh)

    def minter(self, stop, deadline):
        """Minter thread: keeps AHEAD single-use tokens per class for the current key."""
        rng = random.Random(4242)
        while not stop.is_set() and time.monotonic() < deadline:
            cur = self.idp.current()
            busy = False
            for cls in self.SINGLE_USE:
                q = self.queue_of(cls, cur.kid)
                with self.lock:
                    short = len(self.queues.get(q, ())) < self.AHEAD
                if not short:
                    continue
                try:
                    item = self.make(cls, cur, rng)
                except Exception as e:
                    self.idp.error(f"minting {cls}: {e}")
                    stop.wait(0.5)
                    continue
                with self.lock:
                    self.queues.setdefault(q, collections.deque()).append(item)
                busy = True
            if not busy:
                stop.wait(0.02)

    def take(self, cls, key):
        """A single-use token (token, sub) for `key` minted ahead; None (counted in
        `starved`) when its queue is dry."""
        with self.lock:
            q = self.queues.get(self.queue_of(cls, key.kid))
            if q:
                return q.popleft()
            self.starved[cls] = self.starved.get(cls, 0) + 1
            return None

    def good_token(self, key, rng):
        return rng.choice(key.pool)

    def request(self, rng):
        """Builds one request: (class, path, headers, expected sub, key or None)."""
        cls = rng.choices(self.names, self.weights)[0]
        if cls in ("unknown_kid", "retired_key") and not self.idp.flood_allowed():
            cls = "good_current"
        pub = self.idp.published()
        cur = pub[-1]
        h = {}
        sub = None
        key = None
        path = f"/api/items/{rng.randrange(1000)}"
        if cls == "good_previous":
            if len(pub) < 2:
                cls = "good_current"
            else:
                key = pub[-2]
                tok, sub = self.good_token(key, rng)
        if cls in ("good_current", "spoofed_headers"):
            key = cur
            tok, sub = self.good_token(key, rng)
        if cls in self.SINGLE_USE:
            key = cur if cls == "good_fresh" else None
            tok, sub = self.take(cls, cur) or self.make(cls, cur, rng)  # dry: mint it now
        if cls == "bad_signature":
            tok, _ = self.good_token(cur, rng)
            head, sig = tok.rsplit(".", 1)
            raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            tok = f"{head}.{b64(bytes(raw))}"
        if cls == "alg_none":
            tok = f"{b64(json.dumps({'alg': 'none', 'kid': cur.kid}))}." \
                  f"{b64(json.dumps(self.claims('none')))}."
        if cls == "alg_confusion":
            # HS256 under a real kid. The MAC key is the kid (the old driver put an ECDSA
            # signature under this header): a provider limited to ES256 refuses HS256
            # whatever the MAC.
            tok = hs256({"alg": "HS256", "kid": cur.kid, "typ": "JWT"}, self.claims("hs"),
                        cur.kid.encode())
        if cls == "retired_key":
            with self.idp.lock:
                retired = [k for k in self.idp.keys if k.dropped_at is not None]
            if not retired:
                cls, key = "good_current", cur
                tok, sub = self.good_token(key, rng)
            else:
                key = rng.choice(retired[-3:])
                tok, sub = self.good_token(key, rng)
        if cls in ("public", "public_spoofed"):
            path = rng.choice(["/healthz", "/healthz/live", "/public/../healthz"])
            tok = None
        if cls == "no_token":
            tok = None
        if tok is not None:
            h["authorization"] = f"Bearer {tok}"
        if cls in ("spoofed_headers", "public_spoofed"):
            h["x-jwt-sub"] = "admin"
            h["X_JWT_SUB"] = "admin"
            h["x-jwt-role"] = "root"
        return cls, path, h, sub, key

    def judge(self, cls, status, body, sub, key, sent_at):
        """None when right, 'tolerated:<why>' when allowed by the rules, else the reason."""
        if cls in ("good_current", "good_previous", "good_fresh", "spoofed_headers"):
            if status == 401 and key is not None and key.published_at is not None \
                    and sent_at - key.published_at < self.kidmiss_grace \
                    and self.idp.flood_allowed(key.published_at):
                # A flood rotation: the kid-miss refetch may be rate-limited for one interval.
                return "tolerated:new_key_during_flood"
            if status != 200:
                return f"expected 200, got {status}"
            try:
                hdrs = json.loads(body)["headers"]
            except Exception:
                return "upstream body unreadable"
            subs = [v for k, v in hdrs if k == "x-jwt-sub"]
            if subs != [sub]:
                return f"x-jwt-sub {subs} != [{sub}]"
            if any(k in ("x-jwt-role", "x_jwt_sub") for k, v in hdrs):
                return "spoofed header reached the upstream"
            return None
        if cls in ("public", "public_spoofed"):
            if status != 200:
                return f"public path got {status}"
            try:
                hdrs = json.loads(body)["headers"]
            except Exception:
                return "upstream body unreadable"
            if any(k.startswith("x-jwt") or k.startswith("x_jwt") for k, v in hdrs):
                return "identity header on a public path"
            return None
        if cls == "retired_key":
            if key.dropped_at is not None and sent_at - key.dropped_at > self.revoke_after:
                return None if status == 401 else f"revoked key got {status}"
            return None if status in (200, 401) else f"retired key got {status}"
        return None if status == 401 else f"expected 401, got {status}"

    def worker(self, i, deadline, rps, stop):
        rng = random.Random(i * 7919 + 1)
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        interval = 1.0 / rps
        nxt = time.monotonic() + rng.random() * interval
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                break
            if now < nxt:
                time.sleep(nxt - now)
            nxt += interval
            if time.monotonic() - nxt > 1.0:
                nxt = time.monotonic()  # fell behind: do not burst
            cls, path, headers, sub, key = self.request(rng)
            sent_at = self.idp.now()
            t = time.monotonic()
            try:
                conn.request("GET", path, headers=headers)
                r = conn.getresponse()
                body = r.read()
                status = r.status
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
            except Exception as e:
                status, body = 0, str(e).encode()
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            lat = time.monotonic() - t
            verdict = self.judge(cls, status, body, sub, key, sent_at)
            with self.lock:
                self.total += 1
                s = self.stats.setdefault(cls, {})
                s[status] = s.get(status, 0) + 1
                if len(self.latencies) < 200000:
                    self.latencies.append(lat)
                ok = "ok"
                if verdict is not None and verdict.startswith("tolerated:"):
                    self.tolerated[verdict[10:]] = self.tolerated.get(verdict[10:], 0) + 1
                    ok = verdict
                elif verdict is not None:
                    ok = "WRONG"
                    if len(self.wrong) < 200:
                        self.wrong.append({"t": round(sent_at, 3), "class": cls,
                                           "status": status, "why": verdict,
                                           "kid": key.kid if key else None,
                                           "idp_failing": self.idp.failure_kind(sent_at),
                                           "body": body[:300].decode("utf-8", "replace")})
                    self.wrong_count = getattr(self, "wrong_count", 0) + 1
                self.out.write(f"{sent_at:.3f},{cls},{status},{lat * 1000:.2f},{ok}\n")
        conn.close()


def proc_sample(pid):
    rss = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return rss, fds


def get(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def fetch_results(metrics):
    """The sidecar's jwks_sidecar_jwks_fetch_total by result label."""
    out = {}
    for m in re.finditer(r"^jwks_sidecar_jwks_fetch_total\{([^}]*)\} (\S+)$", metrics, re.M):
        result = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1))).get("result", "?")
        out[result] = out.get(result, 0) + int(float(m.group(2)))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True, help="jwks-sidecar (also serves the IdP)")
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--cycle", type=float, default=60, help="key rotation period (s)")
    ap.add_argument("--rps", type=float, default=300)
    ap.add_argument("--threads", type=int, default=24)
    ap.add_argument("--kid-miss-interval", type=float, default=5)
    ap.add_argument("--kid-miss-wait", type=float, default=2)
    ap.add_argument("--token-cache-entries", type=int, default=1000)
    ap.add_argument("--results", required=True)
    args = ap.parse_args()

    os.makedirs(args.results, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    hard_deadline = time.monotonic() + args.seconds + 120
    work = tempfile.mkdtemp(prefix="jwks-soak.")
    cfg_path = os.path.join(work, "config.toml")
    started = []  # (Popen) we started; stopped by pid at the end
    stop = threading.Event()
    logs = []

    def cleanup(*_):
        stop.set()
        for p in started:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in started:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for f in logs:
            f.close()
        for f in (cfg_path,):
            try:
                os.remove(f)
            except OSError:
                pass
        try:
            os.rmdir(work)
        except OSError:
            pass

    def fail(msg):
        cleanup()
        print(f"soak: {msg}", file=sys.stderr)
        sys.exit(2)

    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(1)))

    echo_port, proxy_port, admin_port = (free_port() for _ in range(3))
    # Quiet zone around even rotations: a flood stopped at its start may still leave a deferred
    # refetch one interval later, which blocks kid-miss refetches for one more interval.
    quiet = max(0.15 * args.cycle, 2 * args.kid_miss_interval + args.kid_miss_wait + 1)
    idp_log_path = os.path.join(args.results, f"idp-{stamp}.log")
    idp_log = open(idp_log_path, "wb")
    logs.append(idp_log)
    idp = IdP(args.binary, args.cycle, quiet, idp_log)
    started.append(idp.proc)
    try:
        idp.wait_ready(timeout=30)
    except RuntimeError as e:
        fail(f"the IdP did not start: {e}; its stderr: {idp_log_path}")

    echo = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--echo", str(echo_port)])
    started.append(echo)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", echo_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)

    client = Client(idp, proxy_port, args, None)
    idp.on_new_key = client.prepare_key
    try:
        idp.setup()
    except Exception as e:
        fail(f"setting up the IdP failed: {e}; its stderr: {idp_log_path}")

    config = f"""
[proxy]
listen = "127.0.0.1:{proxy_port}"
upstream = "http://127.0.0.1:{echo_port}"
public_paths = ["/healthz"]

[admin]
listen = "127.0.0.1:{admin_port}"

[log]
level = "warn"
format = "json"

# Small, so the cache is full within the first minute: later RSS growth is then not the cache.
[token_cache]
max_entries = {args.token_cache_entries}

[[providers]]
name = "soak"
issuer = "{idp.issuer}"
jwks_uri = "{idp.jwks_uri}"
audiences = ["{AUD}"]
algorithms = ["ES256"]
refresh_interval = "10s"
min_refresh = "5s"
max_refresh = "30s"
kid_miss_min_interval = "{args.kid_miss_interval}s"
kid_miss_wait = "{args.kid_miss_wait}s"
max_stale = "1h"
fetch_timeout = "2s"
max_jwks_bytes = 1048576

[providers.claim_headers]
sub = "x-jwt-sub"
"""
    with open(cfg_path, "w") as f:
        f.write(config)
    log_path = os.path.join(args.results, f"sidecar-{stamp}.log")
    log = open(log_path, "wb")
    logs.append(log)
    sidecar = subprocess.Popen([args.binary, "--config", cfg_path], stdout=log, stderr=log)
    started.append(sidecar)

    ready_by = time.monotonic() + 30
    while True:
        try:
            if get(f"http://127.0.0.1:{admin_port}/readyz")[0] == 200:
                break
        except Exception:
            pass
        if time.monotonic() > ready_by or sidecar.poll() is not None:
            fail(f"sidecar did not become ready; log: {log_path}")
        time.sleep(0.2)

    print(f"soak: sidecar pid {sidecar.pid} ready, IdP pid {idp.proc.pid} at {idp.issuer}; "
          f"{args.seconds:.0f}s at {args.rps:.0f} rps, rotation every {args.cycle:.0f}s",
          flush=True)
    out = gzip.open(os.path.join(args.results, f"responses-{stamp}.csv.gz"), "wt")
    out.write("t,class,status,latency_ms,verdict\n")
    client.out = out
    idp.begin()
    deadline = time.monotonic() + args.seconds
    threading.Thread(target=idp.schedule, args=(stop, deadline), daemon=True).start()
    threading.Thread(target=client.minter, args=(stop, deadline), daemon=True).start()

    workers = [threading.Thread(target=client.worker,
                                args=(i, deadline, args.rps / args.threads, stop))
               for i in range(args.threads)]
    for w in workers:
        w.start()

    samples = []
    next_sample = time.monotonic()
    while any(w.is_alive() for w in workers):
        if time.monotonic() > hard_deadline:
            stop.set()
        if time.monotonic() >= next_sample:
            try:
                rss, fds = proc_sample(sidecar.pid)
                samples.append({"t": round(idp.now(), 1), "rss": rss, "fds": fds,
                                "requests": client.total})
                print(f"soak: t={idp.now():6.1f}s requests={client.total} "
                      f"wrong={getattr(client, 'wrong_count', 0)} rss={rss / MiB:.1f}MiB "
                      f"fds={fds} keys={[k.kid for k in idp.published()]} "
                      f"idp={idp.state or 'ok'}", flush=True)
            except FileNotFoundError:
                print("soak: the sidecar exited!", file=sys.stderr)
                stop.set()
            if idp.proc.poll() is not None:
                idp.error(f"the IdP exited with status {idp.proc.returncode}")
                stop.set()
            next_sample += 10
        time.sleep(0.2)
    for w in workers:
        w.join(timeout=15)
    try:
        rss, fds = proc_sample(sidecar.pid)
        samples.append({"t": round(idp.now(), 1), "rss": rss, "fds": fds, "requests": client.total})
    except FileNotFoundError:
        pass
    out.close()

    metrics = ""
    try:
        metrics = get(f"http://127.0.0.1:{admin_port}/metrics")[1]
    except Exception as e:
        metrics = f"unavailable: {e}"
    sidecar_alive = sidecar.poll() is None
    try:
        idp_stats = idp.stats()
    except Exception as e:
        idp.error(f"final stats: {e}")
        idp_stats = None
    idp_alive = idp_stats is not None and idp.proc.poll() is None
    stop.set()
    cleanup()

    dur = samples[-1]["t"] if samples else 0
    first = [s["rss"] for s in samples if s["t"] <= 60]
    last = [s["rss"] for s in samples if s["t"] >= dur - 60]
    rss_first, rss_last = max(first or [0]), max(last or [0])
    fds_all = [s["fds"] for s in samples]
    lat = sorted(client.latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000 if lat else 0
    interesting = [l for l in metrics.splitlines() if l.startswith((
        "jwks_sidecar_jwks_fetch_total", "jwks_sidecar_jwks_kid_miss_total",
        "jwks_sidecar_jwks_key_changes_total", "jwks_sidecar_token_cache_total",
        "jwks_sidecar_jwks_stale", "jwks_sidecar_jwks_keys", "jwks_sidecar_key_lookups_total"))]
    sidecar_fetches = fetch_results(metrics)
    # What the IdP answered, by the state the schedule had set (see IdP.answers), next to
    # what the sidecar made of it (its fetch result labels).
    idp_serves = idp.answers(idp_stats["jwks_fetches"] if idp_stats else 0, sidecar_fetches)
    wrong = getattr(client, "wrong_count", 0)
    flat = (rss_last - rss_first) < 10 * MiB
    summary = {
        "seconds": round(dur, 1), "requests": client.total,
        "rps": round(client.total / dur, 1) if dur else 0,
        "wrong_decisions": wrong, "tolerated": client.tolerated,
        "by_class": {c: {str(k): v for k, v in sorted(s.items())} for c, s in
                     sorted(client.stats.items())},
        "latency_ms": {"p50": round(pct(0.5), 2), "p99": round(pct(0.99), 2),
                       "max": round(lat[-1] * 1000, 2) if lat else 0},
        "rss_first_minute_max_mib": round(rss_first / MiB, 2),
        "rss_last_minute_max_mib": round(rss_last / MiB, 2),
        "rss_flat": flat,
        "fds": {"first": fds_all[0] if fds_all else None, "last": fds_all[-1] if fds_all else None,
                "max": max(fds_all) if fds_all else None},
        "keys_rotated": idp.n, "idp_serves": idp_serves, "sidecar_fetches": sidecar_fetches,
        "idp_stats": idp_stats, "idp_errors": idp.errors, "idp_alive_at_end": idp_alive,
        "tokens_minted": client.minted, "single_use_starved": client.starved,
        "sidecar_alive_at_end": sidecar_alive,
        "samples": samples, "idp_log": idp.log, "wrong_examples": client.wrong[:20],
        "metrics": interesting,
    }
    path = os.path.join(args.results, f"summary-{stamp}.json")
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
    md = os.path.join(args.results, f"summary-{stamp}.md")
    with open(md, "w") as f:
        f.write(f"# jwks-sidecar soak {stamp}\n\n")
        f.write(f"- duration {dur:.0f} s, {client.total} requests ({summary['rps']} rps), "
                f"{idp.n} keys (rotation every {args.cycle:.0f} s)\n")
        f.write(f"- wrong decisions: **{wrong}**; tolerated: {client.tolerated or 'none'}\n")
        f.write(f"- latency p50 {summary['latency_ms']['p50']} ms, p99 "
                f"{summary['latency_ms']['p99']} ms\n")
        f.write(f"- RSS max first minute {rss_first / MiB:.1f} MiB, last minute "
                f"{rss_last / MiB:.1f} MiB ({'flat' if flat else 'GROWING'})\n")
        f.write(f"- fds first {summary['fds']['first']}, last {summary['fds']['last']}, "
                f"max {summary['fds']['max']}\n")
        f.write(f"- IdP answers (JWKS requests by the state the schedule set): {idp_serves}\n")
        f.write(f"- sidecar fetch results: {sidecar_fetches}\n")
        f.write(f"- IdP (`{os.path.basename(args.binary)} idp`): "
                f"{'alive' if idp_alive else 'DEAD'} at the end, "
                f"errors: {idp.errors or 'none'}; {client.minted} single-use tokens minted "
                f"ahead, dry queues: {client.starved or 'none'}\n\n")
        f.write("| class | statuses |\n|---|---|\n")
        for c, s in summary["by_class"].items():
            f.write(f"| {c} | {s} |\n")
        f.write("\n```\n" + "\n".join(interesting) + "\n```\n")
    print(open(md).read())
    print(f"soak: summary {path}")
    ok = wrong == 0 and flat and sidecar_alive and idp_alive and not idp.errors
    print(f"soak: {'PASS' if ok else 'FAIL'}: {client.total} requests, {wrong} wrong decisions, "
          f"RSS {rss_first / MiB:.1f} -> {rss_last / MiB:.1f} MiB, fds "
          f"{summary['fds']['first']} -> {summary['fds']['last']}, IdP "
          f"{'ok' if idp_alive and not idp.errors else 'FAILED'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo":
        echo_main(int(sys.argv[2]))
    else:
        main()
