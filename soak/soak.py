#!/usr/bin/env python3
"""Bounded soak of a jwks-sidecar release binary (driven by soak/run.sh; see soak/README.md).

One process runs the fake IdP (JWKS over HTTP on 127.0.0.1, ES256 keys rotated every cycle,
failing in some windows) and a rate-limited client; a second process is the echo upstream.
Every response is recorded and judged; RSS and fds of the sidecar are sampled. Everything
binds 127.0.0.1, every loop is bounded, and only the processes started here are stopped.
"""
import argparse
import base64
import gzip
import hashlib
import http.client
import http.server
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

AUD = "api://soak"
MiB = 1024 * 1024


def b64(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Key:
    def __init__(self, kid):
        self.kid = kid
        self.priv = ec.generate_private_key(ec.SECP256R1())
        n = self.priv.public_key().public_numbers()
        self.jwk = {"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
                    "x": b64(n.x.to_bytes(32, "big")), "y": b64(n.y.to_bytes(32, "big"))}
        self.published_at = None
        self.dropped_at = None

    def sign(self, header, claims):
        h = b64(json.dumps(header, separators=(",", ":")))
        p = b64(json.dumps(claims, separators=(",", ":")))
        der = self.priv.sign(f"{h}.{p}".encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{h}.{p}.{b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


class IdP:
    """Key state and the failure schedule; the JWKS handler and the client both read it."""

    def __init__(self, cycle, issuer, quiet):
        self.cycle = cycle
        self.quiet = quiet
        self.issuer = issuer
        self.lock = threading.Lock()
        self.keys = []            # every key ever made, oldest first
        self.n = 0
        self.serve_log = []
        self.t0 = time.monotonic()
        self.serves = {"ok": 0, "not_modified": 0, "500": 0, "timeout": 0, "garbage": 0,
                       "too_large": 0}
        self.rotate()

    def now(self):
        return time.monotonic() - self.t0

    def rotate(self):
        with self.lock:
            self.n += 1
            k = Key(f"soak-{self.n}")
            k.published_at = self.now()
            self.keys.append(k)

    def drop_old(self):
        with self.lock:
            for k in self.keys[:-1]:
                if k.dropped_at is None:
                    k.dropped_at = self.now()

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
            return ["500", "timeout", "garbage", "too_large"][(int(k) // 2 + sub) % 4]
        return None

    def flood_allowed(self, t=None):
        """Unknown-kid traffic is paused around the rotations of even cycles, so those
        rotations test the kid-miss refetch without a competing flood."""
        t = (self.now() if t is None else t) + self.quiet
        k, phase = divmod(t, self.cycle)
        return not (int(k) % 2 == 0 and phase < 2 * self.quiet)

    def schedule(self, stop, deadline):
        """Rotation thread: rotate at every cycle start, drop the old keys at mid-cycle."""
        k = 1
        while not stop.is_set():
            t_drop = (k - 1) * self.cycle + 0.5 * self.cycle
            t_rot = k * self.cycle
            for target, action in ((t_drop, self.drop_old), (t_rot, self.rotate)):
                while not stop.is_set() and self.now() < target:
                    stop.wait(min(0.2, max(0.0, target - self.now())))
                if stop.is_set() or time.monotonic() > deadline:
                    return
                action()
            k += 1

    def handler(idp):
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def send(self, status, body, ctype="application/json", extra=()):
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path != "/jwks.json":
                    return self.send(404, b"{}")
                kind = idp.failure_kind()
                with idp.lock:
                    if len(idp.serve_log) < 5000:
                        idp.serve_log.append((round(idp.now(), 3), kind or "ok",
                                              [k.kid for k in idp.keys if k.dropped_at is None],
                                              self.headers.get("if-none-match")))
                if kind is not None:
                    with idp.lock:
                        idp.serves[kind] += 1
                    if kind == "500":
                        return self.send(500, b"internal error")
                    if kind == "timeout":
                        time.sleep(5)  # fetch_timeout is 2s
                        return self.send(200, b'{"keys": []}')
                    if kind == "garbage":
                        body = random.choice([b"<html>oops</html>", b'{"keys": "nope"}',
                                              b'{"keys": [', b"\x00\xff" * 50])
                        return self.send(200, body)
                    return self.send(200, b"[" + b" " * (2 * MiB) + b"]")  # too_large
                doc = json.dumps({"keys": [k.jwk for k in idp.published()]}).encode()
                etag = '"%s"' % hashlib.sha256(doc).hexdigest()[:16]
                if self.headers.get("if-none-match") == etag:
                    with idp.lock:
                        idp.serves["not_modified"] += 1
                    self.send_response(304)
                    self.send_header("etag", etag)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                with idp.lock:
                    idp.serves["ok"] += 1
                self.send(200, doc, extra=(("etag", etag), ("cache-control", "max-age=5")))

        return H


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
    """Mixed traffic at a bounded rate; judges each response."""

    WEIGHTS = [("good_current", 36), ("good_previous", 8), ("good_fresh", 7), ("expired", 7),
               ("bad_signature", 7), ("unknown_kid", 10), ("spoofed_headers", 6),
               ("public", 5), ("public_spoofed", 2), ("no_token", 3), ("wrong_audience", 2),
               ("alg_none", 1), ("unknown_issuer", 1), ("retired_key", 3), ("alg_confusion", 2)]

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
        self.stray = Key("stray")  # never published: unknown kid / forged tokens
        self.token_pool = {}  # kid -> list of good tokens (reused: exercises the token cache)
        names, weights = zip(*self.WEIGHTS)
        self.names, self.weights = names, weights
        self.revoke_after = max(40.0, 1.25 * idp.cycle + 15)
        self.kidmiss_grace = args.kid_miss_interval + args.kid_miss_wait + 1.5

    def claims(self, sub, **over):
        now = int(time.time())
        c = {"iss": self.idp.issuer, "sub": sub, "aud": AUD, "iat": now, "exp": now + 900}
        c.update(over)
        return c

    def good_token(self, key, rng):
        pool = self.token_pool.setdefault(key.kid, [])
        if len(pool) < 50:
            sub = f"user-{key.kid}-{len(pool)}"
            tok = key.sign({"alg": "ES256", "kid": key.kid, "typ": "JWT"}, self.claims(sub))
            with self.lock:
                pool.append((tok, sub))
            return tok, sub
        return rng.choice(pool)

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
        if cls == "good_fresh":
            key = cur
            sub = f"fresh-{rng.randrange(1 << 30)}"
            tok = key.sign({"alg": "ES256", "kid": key.kid},
                           self.claims(sub, jti=str(rng.random())))
        if cls == "expired":
            now = int(time.time())
            tok = cur.sign({"alg": "ES256", "kid": cur.kid},
                           self.claims("late", iat=now - 7200, exp=now - 3600))
        if cls == "bad_signature":
            tok, _ = self.good_token(cur, rng)
            head, sig = tok.rsplit(".", 1)
            raw = bytearray(base64.urlsafe_b64decode(sig + "=="))
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            tok = f"{head}.{b64(bytes(raw))}"
        if cls == "unknown_kid":
            kid = f"flood-{rng.randrange(1 << 40):x}"
            tok = self.stray.sign({"alg": "ES256", "kid": kid}, self.claims("flood"))
        if cls == "wrong_audience":
            tok = cur.sign({"alg": "ES256", "kid": cur.kid}, self.claims("x", aud="api://other"))
        if cls == "alg_none":
            tok = f"{b64(json.dumps({'alg': 'none', 'kid': cur.kid}))}." \
                  f"{b64(json.dumps(self.claims('none')))}."
        if cls == "alg_confusion":
            tok = self.stray.sign({"alg": "HS256", "kid": cur.kid}, self.claims("hs"))
        if cls == "unknown_issuer":
            tok = cur.sign({"alg": "ES256", "kid": cur.kid},
                           self.claims("x", iss="https://evil.example/"))
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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True)
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
    started = []  # (Popen) we started; stopped by pid at the end
    stop = threading.Event()

    idp_port, echo_port, proxy_port, admin_port = (free_port() for _ in range(4))
    issuer = f"http://127.0.0.1:{idp_port}/"
    # Quiet zone around even rotations: a flood stopped at its start may still leave a deferred
    # refetch one interval later, which blocks kid-miss refetches for one more interval.
    idp = IdP(args.cycle, issuer,
              max(0.15 * args.cycle, 2 * args.kid_miss_interval + args.kid_miss_wait + 1))
    idp_srv = http.server.ThreadingHTTPServer(("127.0.0.1", idp_port), idp.handler())
    idp_srv.daemon_threads = True
    threading.Thread(target=idp_srv.serve_forever, daemon=True).start()

    echo = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--echo", str(echo_port)])
    started.append(echo)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", echo_port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)

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
issuer = "{issuer}"
jwks_uri = "http://127.0.0.1:{idp_port}/jwks.json"
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
    cfg_path = os.path.join(work, "config.toml")
    with open(cfg_path, "w") as f:
        f.write(config)
    log_path = os.path.join(args.results, f"sidecar-{stamp}.log")
    log = open(log_path, "wb")
    sidecar = subprocess.Popen([args.binary, "--config", cfg_path], stdout=log, stderr=log)
    started.append(sidecar)

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
        idp_srv.shutdown()
        for f in (cfg_path,):
            try:
                os.remove(f)
            except OSError:
                pass
        try:
            os.rmdir(work)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, lambda *a: (cleanup(), sys.exit(1)))
    ready_by = time.monotonic() + 30
    while True:
        try:
            if get(f"http://127.0.0.1:{admin_port}/readyz")[0] == 200:
                break
        except Exception:
            pass
        if time.monotonic() > ready_by or sidecar.poll() is not None:
            cleanup()
            print("soak: sidecar did not become ready; log:", log_path, file=sys.stderr)
            sys.exit(2)
        time.sleep(0.2)

    print(f"soak: sidecar pid {sidecar.pid} ready; {args.seconds:.0f}s at {args.rps:.0f} rps, "
          f"rotation every {args.cycle:.0f}s", flush=True)
    idp.t0 = time.monotonic()
    # Restart the IdP clock: the first key counts as published now.
    idp.keys[-1].published_at = 0.0
    deadline = time.monotonic() + args.seconds
    threading.Thread(target=idp.schedule, args=(stop, deadline), daemon=True).start()

    out = gzip.open(os.path.join(args.results, f"responses-{stamp}.csv.gz"), "wt")
    out.write("t,class,status,latency_ms,verdict\n")
    client = Client(idp, proxy_port, args, out)
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
                      f"idp={idp.failure_kind() or 'ok'}", flush=True)
            except FileNotFoundError:
                print("soak: the sidecar exited!", file=sys.stderr)
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
        "keys_rotated": idp.n, "idp_serves": idp.serves,
        "sidecar_alive_at_end": sidecar_alive,
        "samples": samples, "idp_log": idp.serve_log, "wrong_examples": client.wrong[:20], "metrics": interesting,
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
        f.write(f"- IdP answers: {idp.serves}\n\n| class | statuses |\n|---|---|\n")
        for c, s in summary["by_class"].items():
            f.write(f"| {c} | {s} |\n")
        f.write("\n```\n" + "\n".join(interesting) + "\n```\n")
    print(open(md).read())
    print(f"soak: summary {path}")
    ok = wrong == 0 and flat and sidecar_alive
    print(f"soak: {'PASS' if ok else 'FAIL'}: {client.total} requests, {wrong} wrong decisions, "
          f"RSS {rss_first / MiB:.1f} -> {rss_last / MiB:.1f} MiB, fds "
          f"{summary['fds']['first']} -> {summary['fds']['last']}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--echo":
        echo_main(int(sys.argv[2]))
    else:
        main()
