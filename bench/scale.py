#!/usr/bin/env python3
"""Many issuers (issue 20, part 1): jwks-sidecar and Envoy jwt_authn with 1, 10, 100 and 1,000
providers (distinct issuers, each with its own RSA key and JWKS document), all served by one
local fake IdP.

    bash bench/run.sh --only scale          # harness.py hands over to main() here
    python3 bench/scale.py --quick          # the same without run.sh (no install, no build)
    python3 bench/scale.py --quick --sizes 1,100 --idp-delay-ms 0

Per provider count N and proxy: time from process start to ready, the JWKS fetches the IdP saw
before ready (and how many were in flight at once), RSS at ready and after load, then the
harness's wrk load (32 connections, tokens of a provider picked at random per request) for CPU
per request, req/s and p99; for jwks-sidecar also the reload time (config rewritten with one
provider changed, SIGHUP). See bench/README.md "Many issuers".

The IdP runs as a subprocess of this file (`scale.py idp ...`), pinned to core 0 with wrk and
nginx, never on the proxy's core.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SIZES = (1, 10, 100, 1000)
TOKENS = 2000            # tokens per provider count, each of a provider picked at random
AUDIENCE = "api"
CONNS = 32               # as the main rows
IDP_DELAY_MS = 20        # the fake IdP answers each JWKS request after this long (a network round trip)
RELOADS = 3              # SIGHUP reloads per jwks-sidecar row (median reported)
READY_TIMEOUT = 300      # seconds: "ready in seconds, not minutes"; longer is a failure
FLAT = 1.15              # "flat within noise": at most this ratio between the largest N and N = 1


# ---------------------------------------------------------------- the fake IdP (subprocess)

def idp_main(argv: list[str]) -> None:
    """`scale.py idp --port P --docs FILE --delay-ms D`: GET /t/{i}/jwks.json answers document i
    (Cache-Control: max-age=300) after D ms; /_stats returns what it saw (per request: arrival
    time on CLOCK_MONOTONIC, which the harness shares; requests and connections in flight at
    once), /_reset clears it. HTTP/1.1 keep-alive, a thread per connection, backlog 4096."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    ap = argparse.ArgumentParser(prog="scale.py idp")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--docs", required=True)
    ap.add_argument("--delay-ms", type=float, default=IDP_DELAY_MS)
    a = ap.parse_args(argv)
    with open(a.docs) as f:
        bodies = [json.dumps(d, separators=(",", ":")).encode() for d in json.load(f)]
    delay = a.delay_ms / 1000
    lock = threading.Lock()
    st: dict = {}

    def reset():
        open_now = st.get("open", 0)
        st.clear()
        st.update(requests=0, times=[], by_doc={}, inflight=0, max_inflight=0,
                  open=open_now, max_open=open_now, conns=0, not_found=0)

    reset()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        counted = False  # this connection has carried a JWKS request
        # one segment per response, sent at once: head and body buffered together (flushed by
        # handle_one_request), and no Nagle. Otherwise the body waits for the client's delayed
        # ACK of the head on a reused keep-alive connection (~40 ms per response).
        wbufsize = -1
        disable_nagle_algorithm = True

        def send(self, code: int, body: bytes, cache: bool) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if cache:
                self.send_header("Cache-Control", "max-age=300")
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/_stats":
                with lock:
                    body = json.dumps(st).encode()
                return self.send(200, body, False)
            if self.path == "/_reset":
                with lock:
                    reset()
                return self.send(200, b"{}", False)
            m = re.fullmatch(r"/t/(\d+)/jwks\.json", self.path)
            i = int(m.group(1)) if m else -1
            if not 0 <= i < len(bodies):
                with lock:
                    st["not_found"] += 1
                return self.send(404, b'{"error":"not found"}', False)
            with lock:
                st["requests"] += 1
                st["times"].append(time.monotonic())
                st["by_doc"][str(i)] = st["by_doc"].get(str(i), 0) + 1
                st["inflight"] += 1
                st["max_inflight"] = max(st["max_inflight"], st["inflight"])
                if not self.counted:
                    self.counted = True
                    st["conns"] += 1
                    st["open"] += 1
                    st["max_open"] = max(st["max_open"], st["open"])
            try:
                if delay:
                    time.sleep(delay)
                self.send(200, bodies[i], True)
            finally:
                with lock:
                    st["inflight"] -= 1

        def finish(self):
            try:
                super().finish()
            finally:
                if self.counted:
                    with lock:
                        st["open"] -= 1

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 4096
        daemon_threads = True
        allow_reuse_address = True

    Server(("127.0.0.1", a.port), Handler).serve_forever()


class Idp:
    def __init__(self, H, work: str, port: int, docs: list, delay_ms: float):
        self.H, self.port, self.delay_ms = H, port, delay_ms
        self.dir = os.path.join(work, "idp")
        os.makedirs(self.dir, exist_ok=True)
        path = os.path.join(self.dir, "docs.json")
        with open(path, "w") as f:
            json.dump(docs, f)
        self.proc = H.start([sys.executable, os.path.abspath(__file__), "idp", "--port", str(port),
                             "--docs", path, "--delay-ms", f"{delay_ms:g}"], H.LG_CPU,
                            os.path.join(self.dir, "idp.log"))
        H.wait_http(self.url("/_stats"), lambda c, b: c == 200, 30, self.proc)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stats(self) -> dict:
        code, body = self.H.http_get(self.url("/_stats"), timeout=10)
        if code != 200:
            raise RuntimeError(f"IdP /_stats answered {code}")
        return json.loads(body)

    def reset(self) -> None:
        self.H.http_get(self.url("/_reset"), timeout=10)


def issuer(port: int, i) -> str:
    return f"http://127.0.0.1:{port}/t/{i}"


def jwks_uri(port: int, i: int) -> str:
    return f"{issuer(port, i)}/jwks.json"


# ---------------------------------------------------------------- keys and tokens

def _keygen(_):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_numbers()
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    return der, pub.n, pub.e


_DERS: list = []
_LOADED: dict = {}


def _init_signer(ders):
    global _DERS
    _DERS = ders


def _sign(jobs):
    """[(key index, claims)] -> tokens, RS256 with kid scale-{index}."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding
    from gen_tokens import b64u
    out = []
    for i, claims in jobs:
        key = _LOADED.get(i)
        if key is None:
            key = _LOADED[i] = serialization.load_der_private_key(
                _DERS[i], None, unsafe_skip_rsa_key_validation=True)
        head = b64u(json.dumps({"alg": "RS256", "typ": "JWT", "kid": f"scale-{i}"},
                               separators=(",", ":")).encode())
        body = b64u(json.dumps(claims, separators=(",", ":")).encode())
        sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
        out.append(f"{head}.{body}.{b64u(sig)}")
    return out


def make_material(toks: str, port: int, sizes: list[int], log) -> tuple[list, dict]:
    """One distinct RSA-2048 key per issuer (max(sizes) keys, generated once on both cores and
    reused for every N: issuer i has key i, kid scale-{i}, its own JWKS document), and per N a
    file of TOKENS tokens, each for an issuer drawn at random among the N, plus the sanity
    tokens; under "p0", the largest N's with a file of TOKENS tokens all of provider p0.
    Returns (JWKS documents, {N: {"file": path, "first", "last", "tampered", "unknown"}})."""
    from gen_tokens import tamper, uint_b64u
    os.makedirs(toks, exist_ok=True)
    top = max(sizes)
    t0 = time.monotonic()
    with concurrent.futures.ProcessPoolExecutor(max_workers=2) as ex:
        keys = list(ex.map(_keygen, range(top), chunksize=max(1, top // 16)))
    docs = [{"keys": [{"kty": "RSA", "kid": f"scale-{i}", "alg": "RS256", "use": "sig",
                       "n": uint_b64u(n), "e": uint_b64u(e)}]} for i, (_, n, e) in enumerate(keys)]
    log(f"    {top} RSA-2048 keys in {time.monotonic() - t0:.1f} s")
    t0 = time.monotonic()
    now = int(time.time())

    def claims(iss: str, sub: str, jti: str) -> dict:
        return {"iss": iss, "sub": sub, "aud": AUDIENCE, "iat": now, "nbf": now - 60,
                "exp": now + 10 * 365 * 86400, "jti": jti, "scope": "read write"}

    plan = {}
    for n in sizes:
        rng = random.Random(n)
        jobs = []
        for j in range(TOKENS):
            i = rng.randrange(n)
            jobs.append((i, claims(issuer(port, i), f"scale-user-{j}", f"scale-{n}-{j}")))
        sane = [(0, claims(issuer(port, 0), "scale-user-first", f"scale-{n}-first")),
                (n - 1, claims(issuer(port, n - 1), "scale-user-last", f"scale-{n}-last")),
                # an issuer no provider has, signed by provider 0's key (kid scale-0)
                (0, claims(issuer(port, "unknown"), "scale-user-unknown", f"scale-{n}-unknown"))]
        plan[n] = (jobs, sane)
    # diagnostic at the largest N: every token of provider p0 (one hot key set among N)
    p0 = [(0, claims(issuer(port, 0), f"scale-user-{j}", f"scale-p0-{j}")) for j in range(TOKENS)]
    out = {}
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, initializer=_init_signer,
                                                initargs=([k[0] for k in keys],)) as ex:
        futs = {}
        for n, (jobs, sane) in plan.items():
            futs[n] = ([ex.submit(_sign, jobs[k:k + 250]) for k in range(0, len(jobs), 250)],
                       ex.submit(_sign, sane))
        p0parts = [ex.submit(_sign, p0[k:k + 250]) for k in range(0, len(p0), 250)]
        for n, (parts, sane) in futs.items():
            path = os.path.join(toks, f"scale-{n}.txt")
            with open(path, "w") as f:
                for p in parts:
                    for t in p.result():
                        f.write(t + "\n")
            first, last, unknown = sane.result()
            out[n] = {"file": path, "first": first, "last": last, "tampered": tamper(last),
                      "unknown": unknown}
        path = os.path.join(toks, f"scale-{top}-p0.txt")
        with open(path, "w") as f:
            for t in p0parts:
                f.write("\n".join(t.result()) + "\n")
        out["p0"] = {**out[top], "file": path}
    log(f"    {len(sizes)} x {TOKENS} tokens in {time.monotonic() - t0:.1f} s")
    return docs, out


# ---------------------------------------------------------------- proxies

def poll_ready(H, proc, urls: list[str], t0: float, timeout: float) -> float:
    """Seconds from t0 until every URL in turn answers 200 (each polled every 10 ms)."""
    deadline = t0 + timeout
    for url in urls:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
            try:
                code, _ = H.http_get(url, timeout=2)
                if code == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} not ready after {timeout:.0f} s")
            time.sleep(0.01)
    return time.monotonic() - t0


class _Proxy:
    """What harness.measure / run_wrk use of a proxy (harness.Proxy's interface)."""
    kind = "?"
    forwards_payload = True

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return [self.proc.pid]


class ScaleSidecar(_Proxy):
    kind = "jwks-sidecar"

    def __init__(self, H, work: str, n: int, upstream, idp: Idp, rule: bool = True, tag: str = ""):
        self.H, self.n, self.idp, self.rule = H, n, idp, rule
        self.dir = os.path.join(work, f"scale-sc-{n}{'' if rule else '-norule'}{'-' + tag if tag else ''}")
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.admin = H.free_port(), H.free_port()
        self.upstream = upstream
        self.cfg = os.path.join(self.dir, "config.toml")
        self.logfile = os.path.join(self.dir, "stderr.log")
        self.write_config(None)

    def write_config(self, tag) -> None:
        """The main rows' sidecar config (one worker, default log level, token cache off as in
        Envoy without jwt_cache) with N providers; `tag` adds an audience to provider p0 (a
        reload that changes one provider). Written whole, then renamed into place."""
        port = self.idp.port
        L = [f"""[proxy]
listen = "127.0.0.1:{self.port}"
upstream = "http://127.0.0.1:{self.upstream.port}"
public_paths = ["/public"]
payload_header = "x-jwt-payload"

[admin]
listen = "127.0.0.1:{self.admin}"

[log]
format = "json"

[runtime]
worker_threads = 1

[token_cache]
enabled = false
"""]
        if self.rule:  # as Envoy's requires_any over every provider
            names = ", ".join(f'"p{i}"' for i in range(self.n))
            L.append(f"""[[rules]]
name = "api"
match = {{ path_prefix = "/api" }}
require = {{ providers = [{names}] }}
""")
        for i in range(self.n):
            auds = [AUDIENCE] + ([f"reload-{tag}"] if tag is not None and i == 0 else [])
            L.append(f"""[[providers]]
name = "p{i}"
issuer = "{issuer(port, i)}"
jwks_uri = "{jwks_uri(port, i)}"
audiences = [{", ".join(f'"{a}"' for a in auds)}]
[providers.claim_headers]
sub = "x-jwt-sub"
""")
        tmp = self.cfg + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(L))
        os.replace(tmp, self.cfg)

    def start(self) -> float:
        binary = os.path.join(self.H.ROOT, "target", "release", "jwks-sidecar")
        t0 = time.monotonic()
        self.proc = self.H.start([binary, "--config", self.cfg], self.H.PROXY_CPU, self.logfile)
        self.t0 = t0
        return poll_ready(self.H, self.proc, [f"http://127.0.0.1:{self.admin}/readyz"], t0, READY_TIMEOUT)

    def stop(self) -> None:
        self.H.stop(self.proc)

    def reloads_ok(self) -> int:
        _, body = self.H.http_get(f"http://127.0.0.1:{self.admin}/metrics", timeout=10)
        m = re.search(r'^jwks_sidecar_config_reloads_total\{result="ok"\} (\S+)', body, re.M)
        return int(float(m.group(1))) if m else 0

    def reload(self, tag) -> dict:
        """Rewrites the config with provider p0 changed, sends SIGHUP, and waits for the
        sidecar's "configuration reloaded" log line (read from its log file every 2 ms, so the
        waiting costs the single worker thread nothing; /metrics with N providers is not free).
        ms: from just before SIGHUP to that line's own timestamp (both wall clock); then
        jwks_sidecar_config_reloads_total{result="ok"} must have grown."""
        before = self.reloads_ok()
        self.write_config(tag)
        off = os.path.getsize(self.logfile)
        wall0, t0 = time.time(), time.monotonic()
        os.kill(self.proc.pid, signal.SIGHUP)
        buf = ""
        while True:
            with open(self.logfile, errors="replace") as f:
                f.seek(off)
                chunk = f.read()
            off += len(chunk.encode())
            buf += chunk
            done = None
            for line in buf.splitlines():
                if '"configuration reloaded"' in line or "configuration reload rejected" in line:
                    done = line
                    break
            if done:
                break
            buf = buf[buf.rfind("\n") + 1:]
            if time.monotonic() - t0 > 60:
                raise RuntimeError("no reload logged within 60 s of SIGHUP")
            time.sleep(0.002)
        seen = time.monotonic() - t0
        if "rejected" in done:
            raise RuntimeError("reload rejected: " + done[:300])
        ts = json.loads(done)["timestamp"]
        at = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        after = self.reloads_ok()
        if after <= before:
            raise RuntimeError(f"config_reloads_total{{result=\"ok\"}} did not grow ({before} -> {after})")
        return {"ms": (at - wall0) * 1000, "seen_ms": seen * 1000}


class ScaleEnvoy(_Proxy):
    kind = "envoy"

    def __init__(self, H, work: str, n: int, upstream, idp: Idp):
        self.H, self.n, self.idp = H, n, idp
        self.dir = os.path.join(work, f"scale-envoy-{n}")
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.admin = H.free_port(), H.free_port()
        H.Envoy.base_id += 1
        self.base_id = H.Envoy.base_id
        port = idp.port
        providers = {}
        for i in range(n):
            providers[f"p{i}"] = {
                "issuer": issuer(port, i),
                "audiences": [AUDIENCE],
                "remote_jwks": {
                    "http_uri": {"uri": jwks_uri(port, i), "cluster": "idp", "timeout": "10s"},
                    "cache_duration": "300s",
                    # fetch at start, and keep the listener from serving before (fast_listener
                    # false): the equivalent of jwks-sidecar's readiness
                    "async_fetch": {},
                },
                "forward": True,
                "forward_payload_header": "x-jwt-payload",
                "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}],
            }
        # requires_any needs two requirements or more
        requires = ({"provider_name": "p0"} if n == 1 else
                    {"requires_any": {"requirements": [{"provider_name": f"p{i}"} for i in range(n)]}})
        many = {"max_connections": 100000, "max_pending_requests": 100000, "max_requests": 100000}
        filters = [
            {"name": "envoy.filters.http.jwt_authn", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": providers,
                "rules": [{"match": {"prefix": "/public/"}},
                          {"match": {"prefix": "/"}, "requires": requires}],
            }},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ]
        # the IdP: every provider's http_uri names it; circuit breakers raised from their
        # 1024 defaults so 1,000 fetches at once are never refused
        cfg = self.H.envoy_bootstrap(self.admin, self.port, filters, [
            self.H.static_cluster("app", upstream.port),
            self.H.static_cluster("idp", port, circuit_breakers={"thresholds": [many]}),
        ])
        self.cfg = os.path.join(self.dir, "envoy.json")
        with open(self.cfg, "w") as f:
            json.dump(cfg, f)
        self.logfile = os.path.join(self.dir, "stderr.log")

    def start(self) -> float:
        t0 = time.monotonic()
        self.proc = self.H.start([self.H.ENVOY_BIN, "-c", self.cfg, "--concurrency", "1",
                                  "--base-id", str(self.base_id), "-l", "warn"],
                                 self.H.PROXY_CPU, self.logfile)
        self.t0 = t0
        # admin /ready (server initialised), then the listener itself serving
        return poll_ready(self.H, self.proc, [f"http://127.0.0.1:{self.admin}/ready",
                                              self.url() + "/public/ready"], t0, READY_TIMEOUT)

    def stop(self) -> None:
        self.H.stop(self.proc)


# ---------------------------------------------------------------- one row

def sanity(H, proxy, tk: dict) -> str:
    """A token of provider 0 and one of provider N-1 -> 200 with x-jwt-sub at the upstream; the
    latter with a tampered signature, a token of an unknown issuer, and no token -> 401."""
    base = proxy.url()
    checks = []
    for name, tok, sub in (("provider 0", tk["first"], "scale-user-first"),
                           (f"provider {proxy.n - 1}", tk["last"], "scale-user-last")):
        code, body = H.http_get(base + "/api/echo", {"Authorization": "Bearer " + tok})
        checks.append((f"token of {name} -> 200 + x-jwt-sub", code == 200 and f"sub={sub}" in body,
                       f"{code} {body.strip()[:60]}"))
    for name, tok in (("tampered signature", tk["tampered"]), ("unknown issuer", tk["unknown"]),
                      ("no token", None)):
        code, _ = H.http_get(base + "/api/echo", {"Authorization": "Bearer " + tok} if tok else {})
        checks.append((f"{name} -> 401", code == 401, code))
    failed = [f"{name} (got {got})" for name, ok, got in checks if not ok]
    if failed:
        raise RuntimeError(f"sanity failed for {proxy.kind} with {proxy.n} providers: " + "; ".join(failed))
    return f"{len(checks)}/{len(checks)} checks"


def run_one(H, proxy, upstream, idp: Idp, tk: dict, args) -> dict:
    res = {"kind": proxy.kind, "n": proxy.n, "rule": getattr(proxy, "rule", True), "reps": []}
    try:
        idp.reset()
        res["ready_s"] = proxy.start()
        t_ready = proxy.t0 + res["ready_s"]
        res["rss_ready_kib"] = H.status_kib(proxy.proc.pid, "VmRSS")
        st = idp.stats()
        times = st["times"]
        res["idp"] = {
            "fetches_at_ready": sum(1 for t in times if t <= t_ready),
            "distinct_docs": len(st["by_doc"]),
            "first_s": (min(times) - proxy.t0) if times else None,
            "last_s": (max(times) - proxy.t0) if times else None,
            "max_inflight": st["max_inflight"], "max_open_conns": st["max_open"], "conns": st["conns"],
            "not_found": st["not_found"],
        }
        res["sanity"] = sanity(H, proxy, tk)

        def load(secs, lg=H.LG_CPU):
            return H.run_wrk(proxy, tk["file"], "/api/bench", CONNS, secs, lg)

        load(args.warmup)
        for _ in range(args.reps):
            res["reps"].append(H.measure(proxy, upstream, load, args.duration, H.LG_CPU, None))
        res["rss_load_kib"] = H.status_kib(proxy.proc.pid, "VmRSS")
        res["hwm_kib"] = H.status_kib(proxy.proc.pid, "VmHWM")
        res["idp"]["fetches_until_load_end"] = idp.stats()["requests"]
        if proxy.kind == "jwks-sidecar":
            f0 = idp.stats()["requests"]
            res["reloads"] = [proxy.reload(k) for k in range(args.reloads)]
            res["reload_fetches"] = idp.stats()["requests"] - f0
    except Exception as e:  # a failed row is reported, not hidden
        res["error"] = str(e)
        H.log(f"    {proxy.kind} x {proxy.n} FAILED: {e}")
    finally:
        if getattr(proxy, "proc", None):
            proxy.stop()
    return res


# ---------------------------------------------------------------- the run

def section(H, args, work: str, upstream) -> tuple[str, dict]:
    """Runs every row against the harness's upstream; returns (markdown section, raw data)."""
    sizes = sorted(set(int(x) for x in str(args.sizes).split(",")))
    args.reloads = getattr(args, "reloads", None) or (2 if args.quick else RELOADS)
    port = H.free_port()
    H.log(f"many issuers: keys and tokens for {', '.join(map(str, sizes))} providers")
    docs, toks = make_material(os.path.join(work, "scale-tokens"), port, sizes, H.log)
    idp = Idp(H, work, port, docs, args.idp_delay_ms)
    rows = []
    for n in sizes:
        rows.append(("sc", n, lambda n=n: ScaleSidecar(H, work, n, upstream, idp)))
        if n == sizes[-1] and n > 1:
            # diagnostics: the same without the rule listing every provider; and with every
            # token of p0 (one provider's key hot, the other N-1 idle)
            rows.append(("sc-norule", n, lambda n=n: ScaleSidecar(H, work, n, upstream, idp, rule=False)))
            rows.append(("sc-p0", n, lambda n=n: ScaleSidecar(H, work, n, upstream, idp, tag="p0")))
        rows.append(("envoy", n, lambda n=n: ScaleEnvoy(H, work, n, upstream, idp)))
    results = []
    budget = args.quiet_wait * 2
    for k, (rid, n, make) in enumerate(rows, 1):
        if H.compilers_running() and budget > 0:
            t = time.monotonic()
            H.log(f"    compilers running; waiting (up to {min(120, budget):.0f}s)")
            H.wait_quiet(min(120, budget))
            budget -= time.monotonic() - t
        proxy = make()
        H.log(f"[scale {k}/{len(rows)}] {proxy.kind}, {n} provider{'s' * (n > 1)}"
              + {"sc-norule": ", no rule (default_rule only)", "sc-p0": ", every token of p0"}.get(rid, ""))
        r = run_one(H, proxy, upstream, idp, toks["p0" if rid == "sc-p0" else n], args)
        r["id"] = f"{rid}-{n}"
        if r.get("reps"):
            H.log(f"    ready {r['ready_s']:.2f} s ({r['idp']['fetches_at_ready']} fetches, "
                  f"{r['idp']['max_inflight']} at once)  RSS {r['rss_ready_kib'] / 1024:.1f} MiB  "
                  f"rps {H.med(r, 'rps'):,.0f}  cpu/req {H.med(r, 'cpu_us_per_req') or 0:.1f} us  "
                  f"p99 {(H.med(r, 'p99_us') or 0) / 1000:.2f} ms"
                  + (f"  reload {statistics.median(x['ms'] for x in r['reloads']):.0f} ms"
                     if r.get("reloads") else ""))
        results.append(r)
    H.stop(idp.proc)
    data = {"sizes": sizes, "tokens_per_size": TOKENS, "idp_delay_ms": args.idp_delay_ms,
            "reloads_per_row": args.reloads, "results": results}
    return report(H, data, args), data


def fmt(v, f="{:.2f}", none="–"):
    return none if v is None else f.format(v)


def report(H, data: dict, args) -> str:
    res = data["results"]
    by = {r["id"]: r for r in res}
    sizes = data["sizes"]
    top, low = sizes[-1], sizes[0]

    def get(r, key):
        if r is None or r.get("error"):
            return None
        if key in ("rps", "p99_us", "cpu_us_per_req", "other_cpu_pct", "proxy_cpu_pct"):
            return H.med(r, key)
        if key == "reload_ms":
            return statistics.median(x["ms"] for x in r["reloads"]) if r.get("reloads") else None
        return r.get(key)

    def per_provider(kind_id, n):
        a, b = by.get(f"{kind_id}-{low}"), by.get(f"{kind_id}-{n}")
        # below ~100 providers the difference drowns in RSS noise (an MiB or two either way)
        if n - low < 99 or get(a, "rss_ready_kib") is None or get(b, "rss_ready_kib") is None:
            return None
        return (b["rss_ready_kib"] - a["rss_ready_kib"]) / (n - low)

    L = ["## Many issuers: 1 to 1,000 providers (issue 20)", ""]
    L.append(
        f"One fake IdP (Python, core 0 with wrk and nginx) serves a distinct JWKS for each issuer "
        f"`http://127.0.0.1:PORT/t/{{i}}` at `/t/{{i}}/jwks.json`: its own RSA-2048 key (one key per issuer, "
        f"generated once per run, kid `scale-{{i}}`), `Cache-Control: max-age=300`, answered after "
        f"{data['idp_delay_ms']:g} ms (a network round trip). Per N, {data['tokens_per_size']:,} RS256 tokens, "
        f"each of a provider drawn at random among the N, sent round-robin by wrk (`-t1 -c{CONNS}`, "
        f"`wrk/bench.lua`), so every request is a random provider's; the proxy alone on core 1, one worker. "
        f"jwks-sidecar: N `[[providers]]` with `jwks_uri`, token cache off (as Envoy without `jwt_cache`), "
        f"and a rule `/api` with `require = {{ providers = [all N] }}` (Envoy's requires_any); the "
        f"\"no rule\" row has only `[default_rule] authenticate`; the \"every token of p0\" row sends only "
        f"tokens of provider p0 to the same N providers (one key set hot, the others idle). Envoy {envoy_version(H)}: N providers with "
        f"`remote_jwks` (`async_fetch: {{}}`, so keys are fetched at start and the listener waits for them; "
        f"one `idp` cluster, circuit breakers raised), `/` requiring `requires_any` over every provider "
        f"(`provider_name` for N = 1).")
    L.append("")
    L.append("- **ready**: process start to `/readyz` 200 (jwks-sidecar, every provider has keys) or admin "
             "`/ready` 200 and the listener answering (Envoy), polled every 10 ms.")
    L.append("- **fetches at start**: JWKS requests the IdP received before ready; in brackets the most in "
             "flight at once and the connections they came on.")
    L.append("- **RSS**: VmRSS at ready and after the timed load; **KiB/provider**: (RSS at ready with N − "
             f"RSS at ready with {low}) / (N − {low}), from 100 providers up (below, RSS noise dominates).")
    L.append("- **reload** (jwks-sidecar): the config file rewritten with provider p0 given a second audience, "
             "then SIGHUP; time to the sidecar's `configuration reloaded` log line (its own timestamp), checked "
             "against `jwks_sidecar_config_reloads_total{result=\"ok\"}`; median (min–max) of "
             f"{data['reloads_per_row']}. Envoy: – (a static bootstrap has no reload; hot restart or an xDS "
             "update is not the same operation).")
    L.append(f"- {args.reps} × {args.duration:g} s timed, {args.warmup:g} s warm-up, medians.")
    L.append("")
    L.append("| proxy | providers | ready s | fetches at start (in flight / conns) | RSS ready MiB | RSS after load MiB "
             "| KiB/provider | req/s | p99 ms | CPU µs/req | reload ms | notes |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")

    def line(r, label, kind_id):
        n = r["n"]
        notes = []
        if r.get("error"):
            notes.append("ERROR: " + r["error"][:160])
        errs = sum(x["errors"] for x in r.get("reps", []))
        if errs:
            notes.append(f"**{errs} errors/non-2xx — invalid**")
        idp = r.get("idp") or {}
        if idp and idp.get("fetches_until_load_end", 0) > idp.get("fetches_at_ready", 0):
            notes.append(f"{idp['fetches_until_load_end'] - idp['fetches_at_ready']} more fetches after ready")
        if r.get("reload_fetches"):
            notes.append(f"{r['reload_fetches']} fetches during the reloads")
        core = get(r, "proxy_cpu_pct")
        if core is not None and core < 90:
            notes.append(f"proxy at {core:.0f} % of its core")
        oth = get(r, "other_cpu_pct")
        if oth and oth > 5:
            notes.append(f"other load {oth:.0f} %")
        if idp and idp.get("first_s") is not None:
            notes.append(f"fetches {idp['first_s']:.2f}–{idp['last_s']:.2f} s after start")
        f = "–"
        if idp:
            f = f"{idp['fetches_at_ready']} ({idp['max_inflight']} / {idp['conns']})"
        rl = "–"
        if r.get("reloads"):
            ms = [x["ms"] for x in r["reloads"]]
            rl = f"{statistics.median(ms):.1f}" + (f" ({min(ms):.1f}–{max(ms):.1f})" if len(ms) > 1 else "")
        pp = per_provider(kind_id, n)
        mib = lambda k: fmt(None if get(r, k) is None else get(r, k) / 1024, "{:.1f}")
        p99 = get(r, "p99_us")
        return (f"| {label} | {n:,} | {fmt(get(r, 'ready_s'))} | {f} | {mib('rss_ready_kib')} | "
                f"{mib('rss_load_kib')} | {fmt(pp, '{:.1f}')} | {fmt(get(r, 'rps'), '{:,.0f}')} | "
                f"{fmt(None if p99 is None else p99 / 1000)} | "
                f"{fmt(get(r, 'cpu_us_per_req'), '{:.1f}')} | {rl} | {'; '.join(notes)} |")

    def ratio(a, b, key):
        va, vb = get(a, key), get(b, key)
        return None if va is None or not vb else va / vb

    for n in sizes:
        sc, ev, nr = by.get(f"sc-{n}"), by.get(f"envoy-{n}"), by.get(f"sc-norule-{n}")
        if sc:
            L.append(line(sc, "jwks-sidecar", "sc"))
        if nr:
            L.append(line(nr, "jwks-sidecar, no rule", "sc-norule"))
        if by.get(f"sc-p0-{n}"):
            L.append(line(by[f"sc-p0-{n}"], "jwks-sidecar, every token of p0", "sc-p0"))
        if ev:
            L.append(line(ev, "Envoy", "envoy"))
        if sc and ev:
            x = lambda k: fmt(ratio(sc, ev, k), "{:.2f}×")
            pp_s, pp_e = per_provider("sc", n), per_provider("envoy", n)
            L.append(f"| *sidecar ÷ Envoy* | {n:,} | {x('ready_s')} | | {x('rss_ready_kib')} | {x('rss_load_kib')} | "
                     f"{fmt(pp_s / pp_e if pp_s is not None and pp_e else None, '{:.2f}×')} | {x('rps')} | "
                     f"{x('p99_us')} | {x('cpu_us_per_req')} | | |")
    L.append("")
    L.append(f"### Flat from {low} to {top:,} providers? (target: CPU/request and p99 within noise, "
             f"taken here as ≤ {FLAT:.2f}×; ready in seconds)")
    L.append("")
    L.append("| | jwks-sidecar | Envoy |")
    L.append("|---|---|---|")
    s1, st_, e1, et = by.get(f"sc-{low}"), by.get(f"sc-{top}"), by.get(f"envoy-{low}"), by.get(f"envoy-{top}")

    def verdict(a, b, key, flat=True):
        x = ratio(b, a, key)
        if x is None:
            return "not measured"
        f, d = {"p99_us": ("{:.2f} ms", 1000), "rps": ("{:,.0f}", 1), "cpu_us_per_req": ("{:.1f} µs", 1),
                "reload_ms": ("{:.1f} ms", 1)}.get(key, ("{:.2f}", 1))
        txt = f"{x:.2f}× ({f.format(get(a, key) / d)} → {f.format(get(b, key) / d)})"
        return txt + ((" flat" if x <= FLAT else " **grew**") if flat else "")

    L.append(f"| CPU µs/request, {top:,} ÷ {low} | {verdict(s1, st_, 'cpu_us_per_req')} | {verdict(e1, et, 'cpu_us_per_req', False)} |")
    L.append(f"| p99 ms, {top:,} ÷ {low} | {verdict(s1, st_, 'p99_us')} | {verdict(e1, et, 'p99_us', False)} |")
    L.append(f"| req/s, {top:,} ÷ {low} | {verdict(s1, st_, 'rps', False)} | {verdict(e1, et, 'rps', False)} |")
    nr = by.get(f"sc-norule-{top}")
    if nr and st_:
        L.append(f"| CPU µs/request at {top:,}: rule listing every provider ÷ default rule only | "
                 f"{fmt(ratio(st_, nr, 'cpu_us_per_req'), '{:.2f}×')} | |")
    p0 = by.get(f"sc-p0-{top}")
    if p0 and st_:
        L.append(f"| CPU µs/request at {top:,}: tokens of a random provider ÷ every token of p0 | "
                 f"{fmt(ratio(st_, p0, 'cpu_us_per_req'), '{:.2f}×')} | |")
    L.append(f"| ready at {top:,} (s) | {fmt(get(st_, 'ready_s'))} | {fmt(get(et, 'ready_s'))} |")
    pps, ppe = per_provider("sc", top), per_provider("envoy", top)
    L.append(f"| memory per provider (KiB, RSS at ready) | {fmt(pps, '{:.1f}')} | {fmt(ppe, '{:.1f}')} |")
    L.append(f"| reload at {top:,} ÷ at {low} | {verdict(s1, st_, 'reload_ms', False)} | – |")
    if st_ and st_.get("idp"):
        i = st_["idp"]
        L.append(f"| startup fetches at {top:,}: most in flight at once, connections, first–last after start | "
                 f"{i['max_inflight']}, {i['conns']}, {fmt(i['first_s'])}–{fmt(i['last_s'])} s | "
                 + (f"{et['idp']['max_inflight']}, {et['idp']['conns']}, {fmt(et['idp']['first_s'])}–"
                    f"{fmt(et['idp']['last_s'])} s |" if et and et.get("idp") else "– |"))
    L.append("")
    return "\n".join(L)


def envoy_version(H) -> str:
    v = H.tool_version([H.ENVOY_BIN, "--version"])
    m = re.search(r"/(\d+\.\d+\.\d+)/", v)
    return m.group(1) if m else v


def main(H, args, work: str) -> int:
    """`--only scale`: its own upstream, rows and report (bench/results/<stamp>-scale.md)."""
    args.sizes = getattr(args, "sizes", None) or ",".join(map(str, SIZES))
    args.idp_delay_ms = IDP_DELAY_MS if getattr(args, "idp_delay_ms", None) is None else args.idp_delay_ms
    upstream = H.Upstream(work)
    upstream.start()
    quiet = H.wait_quiet(args.quiet_wait)
    H.log(f"machine: {quiet}")
    t0 = time.monotonic()
    md, data = section(H, args, work, upstream)
    H.stop(upstream.proc)
    elapsed = time.monotonic() - t0
    others = [x["other_cpu_pct"] for r in data["results"] for x in r.get("reps", [])]
    steals = [x["steal_pct"] for r in data["results"] for x in r.get("reps", [])]
    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                           capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now()
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores ({cpu_model}), {mem_gib:.0f} GiB, {platform.system()} {platform.release()}",
        "sidecar_rev": rev + (" + uncommitted src changes" if dirty else ""),
        "envoy": envoy_version(H), "wrk": H.tool_version(["wrk", "-v"]).split(" [")[0],
        "nginx": H.tool_version(["nginx", "-v"]).split(": ")[-1],
        "mode": "quick" if args.quick else "full", "quiet": quiet, "minutes": elapsed / 60,
    }
    head = [f"# jwks-sidecar vs Envoy jwt_authn: many issuers — {meta['date']}", "",
            f"- Machine: {meta['machine']}",
            f"- Versions: jwks-sidecar {meta['sidecar_rev']} (release build), Envoy {meta['envoy']}, "
            f"{meta['wrk']}, {meta['nginx']}",
            f"- Mode: {meta['mode']}; {elapsed / 60:.1f} min",
            f"- Noise: {quiet}; other load during timed runs (share of both cores): median "
            f"{statistics.median(others) if others else 0:.0f} %, max {max(others) if others else 0:.0f} %; "
            f"steal max {max(steals) if steals else 0:.0f} %",
            "- Sanity before timing, every row: a token of provider 0 and one of provider N−1 200 with "
            "x-jwt-sub at the upstream; the latter tampered, a token of an unknown issuer and no token 401.",
            ""]
    text = "\n".join(head) + "\n" + md
    outdir = os.path.join(HERE, "results")
    os.makedirs(outdir, exist_ok=True)
    stem = now.strftime("%Y-%m-%d-%H%M") + ("-quick" if args.quick else "") + "-scale"
    with open(os.path.join(outdir, stem + ".md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(outdir, stem + ".json"), "w") as f:
        json.dump({"meta": meta, **data}, f, indent=1, default=str)
    print(text)
    H.log(f"written bench/results/{stem}.md (and .json)")
    return 1 if any(r.get("error") for r in data["results"]) else 0


def cli() -> int:
    """Standalone: the harness's options plus the scale ones; no install, no build."""
    import atexit
    import shutil
    import tempfile
    sys.path.insert(0, HERE)
    import harness as H
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 repetition of 3 s per row")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--duration", type=int, help="seconds per timed run")
    ap.add_argument("--quiet-wait", type=float, default=240)
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (keys, configs, logs)")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="provider counts, comma-separated")
    ap.add_argument("--idp-delay-ms", type=float, default=IDP_DELAY_MS,
                    help="the fake IdP's delay before each JWKS answer")
    ap.add_argument("--reloads", type=int, help=f"SIGHUP reloads per jwks-sidecar row (default {RELOADS}, quick 2)")
    args = ap.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = int(args.duration or (3 if args.quick else 10))
    args.warmup = 1 if args.quick else 2
    work = tempfile.mkdtemp(prefix="jwks-bench-scale-")
    if not args.keep:
        atexit.register(lambda: (H._cleanup(), shutil.rmtree(work, True)))
    else:
        H.log(f"keeping {work}")
    H.ENVOY_BIN = H.envoy_binary(work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return main(H, args, work)


if __name__ == "__main__":
    if sys.argv[1:2] == ["idp"]:
        idp_main(sys.argv[2:])
    else:
        sys.exit(cli())
