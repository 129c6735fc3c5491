#!/usr/bin/env python3
"""DPoP replay-cache memory under a flood of unique proofs (RFC 9449).

Starts the release sidecar (target/release/jwks-sidecar) in front of a Debian nginx, both on
127.0.0.1: one provider whose key set is a local jwks_file, token cache on, one worker,
`[dpop] replay_cache_entries = 100000`, `max_age = "1h"`, `[proxy] public_origin =
"http://bench.test"`, log level warn (no access lines: the RSS is the process's, not a log
buffer's). Then sends N unique, valid DPoP proofs (default 400,000) with one DPoP-bound ES256
token over several keep-alive connections (threads), each proof made just before it is sent
(iat = now, as a real client's), and samples the sidecar's RSS (/proc/PID/status VmRSS)
before and after every 50,000 proofs, with jwks_sidecar_dpop_replay_evictions_total, the
proxy listener's allow/deny counts (jwks_sidecar_requests_total) and the proof results
(jwks_sidecar_dpop_proofs_total) from the admin /metrics.

Expected: RSS rises while the cache fills (its two generations of 16 shards hold at most
replay_cache_entries), then stays flat; evictions are counted only once the proofs sent exceed
the cache's capacity (each shard drops its older generation early when its current one fills).
Prints a table and a one-line verdict. Bounded: gives up sending after --budget seconds (300);
the sidecar and nginx are killed at the end, always.

Placement (2 cores): the sidecar alone on core 1, nginx and this client on core 0.

Usage: python3 bench/dpop_flood.py [--proofs 400000] [--every 50000] [--conns 4]
       [--entries 100000] [--budget 300] [--keep]
"""
import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import harness  # noqa: E402  (Upstream: the bench's nginx; start/stop: pinned processes, killed at exit)
from gen_dpop import Prover, public_jwk, thumbprint  # noqa: E402
from gen_tokens import Signer  # noqa: E402

from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

ISSUER = "https://issuer.flood.example/"
AUDIENCE = "api"
ORIGIN = "http://bench.test"
PATH = "/api/flood"


def log(msg: str) -> None:
    print(f"[flood {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Conn:
    """One keep-alive HTTP/1.1 connection with a minimal response reader (status line,
    Content-Length or chunked body)."""

    def __init__(self, port: int):
        self.port = port
        self.sock = None
        self.buf = b""

    def connect(self):
        self.close()
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def close(self):
        if self.sock:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def _fill(self):
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed by peer")
        self.buf += data

    def request(self, raw: bytes) -> int:
        if self.sock is None:
            self.connect()
        self.sock.sendall(raw)
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        hdrs = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(b":")
            hdrs[k.strip().lower()] = v.strip().lower()
        if b"content-length" in hdrs:
            n = int(hdrs[b"content-length"])
            while len(self.buf) < n:
                self._fill()
            self.buf = self.buf[n:]
        elif hdrs.get(b"transfer-encoding") == b"chunked":
            while b"0\r\n\r\n" not in self.buf:
                self._fill()
            self.buf = self.buf.split(b"0\r\n\r\n", 1)[1]
        if hdrs.get(b"connection") == b"close":
            self.close()
        return status


def metrics(admin: int) -> dict:
    _, body = harness.http_get(f"http://127.0.0.1:{admin}/metrics")
    out = {"allow": 0, "deny": 0, "evictions": 0, "proofs": {}}
    for line in body.splitlines():
        if line.startswith("jwks_sidecar_requests_total{") and 'listener="proxy"' in line:
            d = line.split('decision="', 1)[1].split('"', 1)[0] if 'decision="' in line else "?"
            key = "allow" if d == "allow" else "deny"
            out[key] += int(float(line.split()[-1]))
        elif line.startswith("jwks_sidecar_dpop_replay_evictions_total "):
            out["evictions"] = int(float(line.split()[-1]))
        elif line.startswith("jwks_sidecar_dpop_proofs_total{") and 'result="' in line:
            r = line.split('result="', 1)[1].split('"', 1)[0]
            out["proofs"][r] = out["proofs"].get(r, 0) + int(float(line.split()[-1]))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--proofs", type=int, default=400_000)
    ap.add_argument("--every", type=int, default=50_000, help="sample after every this many proofs")
    ap.add_argument("--conns", type=int, default=4, help="keep-alive connections (one thread each)")
    ap.add_argument("--entries", type=int, default=100_000, help="[dpop] replay_cache_entries")
    ap.add_argument("--budget", type=float, default=300, help="seconds of sending before giving up")
    ap.add_argument("--log-level", default="warn")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (config, logs)")
    a = ap.parse_args()

    binary = os.path.join(ROOT, "target", "release", "jwks-sidecar")
    if not os.access(binary, os.X_OK):
        log(f"{binary} not found: build it first (cargo build --release)")
        return 2
    work = tempfile.mkdtemp(prefix="jwks-dpop-flood-")
    procs = []

    def cleanup():
        for p in procs:
            try:
                harness.stop(p)
            except Exception:
                try:
                    p.kill()
                except Exception:
                    pass
        procs.clear()
        if not a.keep:
            shutil.rmtree(work, True)

    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(130))

    # keys: the IdP's ES256 key (its JWKS in a file), the client's holder key, one bound token
    idp = Signer("ES256", "es1")
    jwks = os.path.join(work, "jwks.json")
    with open(jwks, "w") as f:
        json.dump({"keys": [idp.jwk]}, f)
    holder = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    token = idp.sign({"iss": ISSUER, "sub": "flood-user", "aud": AUDIENCE, "iat": now, "nbf": now - 60,
                      "exp": now + 86400, "jti": "flood-token", "cnf": {"jkt": thumbprint(public_jwk(holder))}})
    prover = Prover(holder, "GET", ORIGIN + PATH, token)

    upstream = harness.Upstream(work)
    upstream.start()
    procs.append(upstream.proc)
    port, admin = harness.free_port(), harness.free_port()
    cfg = os.path.join(work, "config.toml")
    with open(cfg, "w") as f:
        f.write(f"""[proxy]
listen = "127.0.0.1:{port}"
upstream = "http://127.0.0.1:{upstream.port}"
public_paths = ["/public"]
public_origin = "{ORIGIN}"

[admin]
listen = "127.0.0.1:{admin}"

[log]
format = "json"
level = "{a.log_level}"

[runtime]
worker_threads = 1

[token_cache]
enabled = true

[[providers]]
name = "flood"
issuer = "{ISSUER}"
jwks_file = "{jwks}"
audiences = ["{AUDIENCE}"]

[providers.claim_headers]
sub = "x-jwt-sub"

[dpop]
max_age = "1h"
replay_cache_entries = {a.entries}
""")
    sc = harness.start([binary, "--config", cfg], harness.PROXY_CPU, os.path.join(work, "sidecar.log"))
    procs.append(sc)
    harness.wait_http(f"http://127.0.0.1:{admin}/readyz", lambda c, b: c == 200, 15, sc)
    pid = sc.pid
    try:
        os.sched_setaffinity(0, {int(harness.LG_CPU)})  # this client beside nginx on core 0
    except OSError:
        pass

    raw_head = (f"GET {PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: DPoP {token}\r\nDPoP: ").encode()

    # sanity: a proof 200, its replay 401, the bound token as Bearer 401 (not counted below)
    c = Conn(port)
    p0 = prover.proof("sanity-0").encode()
    s1 = c.request(raw_head + p0 + b"\r\n\r\n")
    s2 = c.request(raw_head + p0 + b"\r\n\r\n")
    s3 = c.request(f"GET {PATH} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    c.close()
    if (s1, s2, s3) != (200, 401, 401):
        log(f"sanity failed: proof {s1} (want 200), replay {s2} (want 401), as Bearer {s3} (want 401)")
        return 1
    log(f"sidecar pid {pid} on core {harness.PROXY_CPU}; sanity ok (proof 200, replay 401, as Bearer 401)")

    def sample(sent: int, secs: float) -> dict:
        m = metrics(admin)
        return {"sent": sent, "rss_kib": harness.status_kib(pid, "VmRSS"),
                "hwm_kib": harness.status_kib(pid, "VmHWM"), "secs": secs, **m}

    rows = [sample(0, 0.0)]
    base = dict(rows[0])
    lock = threading.Lock()
    state = {"next": 0, "end": 0, "codes": {}, "errors": 0}
    conns = [Conn(port) for _ in range(a.conns)]
    deadline = time.monotonic() + a.budget
    tag = os.urandom(4).hex()

    def worker(conn: Conn):
        codes, errors = {}, 0
        while time.monotonic() < deadline:
            with lock:
                i = state["next"]
                if i >= state["end"]:
                    break
                state["next"] = i + 1
            raw = raw_head + prover.proof(f"flood-{tag}-{i:08d}").encode() + b"\r\n\r\n"
            try:
                s = conn.request(raw)
                codes[s] = codes.get(s, 0) + 1
            except OSError:  # the proof is spent (it may have reached the sidecar): never resent
                errors += 1
                conn.close()
        with lock:
            for k, v in codes.items():
                state["codes"][k] = state["codes"].get(k, 0) + v
            state["errors"] += errors

    t0 = time.monotonic()
    gave_up = False
    sent = 0
    while sent < a.proofs:
        state["end"] = min(a.proofs, sent + a.every)
        ts = [threading.Thread(target=worker, args=(cn,), daemon=True) for cn in conns]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        sent = state["next"]
        rows.append(sample(sent, time.monotonic() - t0))
        r = rows[-1]
        log(f"{sent:>8,} proofs: RSS {r['rss_kib'] / 1024:.1f} MiB, evictions {r['evictions']:,}, "
            f"allow {r['allow'] - base['allow']:,}, deny {r['deny'] - base['deny']:,}, "
            f"{(sent - rows[-2]['sent']) / max(1e-9, r['secs'] - rows[-2]['secs']):,.0f}/s")
        if sent < state["end"]:
            gave_up = True
            log(f"gave up after {a.budget:.0f} s of sending")
            break
    threads = harness.status_kib(pid, "Threads")
    for cn in conns:
        cn.close()

    # the table
    print(f"\nDPoP replay cache under a flood: {sent:,} unique valid proofs (fresh iat), {a.conns} keep-alive "
          f"connections, replay_cache_entries = {a.entries:,}, max_age 1h, 1 worker, log level {a.log_level}")
    print(f"sidecar {binary} (pid {pid}, {threads} threads), {time.strftime('%Y-%m-%d %H:%M')}\n")
    print("| proofs sent | RSS MiB | Δ RSS MiB | peak RSS MiB | evictions | allowed | denied | refused proofs | proofs/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|---|---:|")
    prev = None
    for r in rows:
        refused = {k: v - base["proofs"].get(k, 0) for k, v in r["proofs"].items()
                   if k != "ok" and v - base["proofs"].get(k, 0)}
        rate = "–" if prev is None else f"{(r['sent'] - prev['sent']) / max(1e-9, r['secs'] - prev['secs']):,.0f}"
        print(f"| {r['sent']:,} | {r['rss_kib'] / 1024:.1f} | {(r['rss_kib'] - base['rss_kib']) / 1024:+.1f} | "
              f"{r['hwm_kib'] / 1024:.1f} | {r['evictions'] - base['evictions']:,} | {r['allow'] - base['allow']:,} | "
              f"{r['deny'] - base['deny']:,} | {', '.join(f'{k} {v:,}' for k, v in refused.items()) or '–'} | {rate} |")
        prev = r
    codes = state["codes"]
    print(f"\nclient: HTTP statuses {dict(sorted(codes.items()))}, socket errors {state['errors']}, "
          f"{sent:,} proofs in {rows[-1]['secs']:.1f} s")

    # the verdict. Memory: flat once the proofs sent are twice the capacity (every shard has
    # turned both generations); evictions only past capacity. Separately: every proof was valid
    # and fresh, so any 401 is the sidecar refusing a legitimate request.
    full = [r for r in rows if r["sent"] >= 2 * a.entries]
    before_cap = [r for r in rows if 0 < r["sent"] <= a.entries // 2]
    last = rows[-1]
    problems = []
    if gave_up:
        problems.append(f"incomplete: {sent:,} of {a.proofs:,} proofs within {a.budget:.0f} s")
    if any(r["evictions"] - base["evictions"] for r in before_cap):
        problems.append("evictions before the cache was half full")
    ev = last["evictions"] - base["evictions"]
    if sent > 1.1 * a.entries and not ev:
        problems.append("no evictions counted past capacity")
    if len(full) >= 2:
        rss = [r["rss_kib"] / 1024 for r in full]
        spread = max(rss) - min(rss)
        mem = (f"RSS {base['rss_kib'] / 1024:.1f} MiB before, {full[0]['rss_kib'] / 1024:.1f} MiB at "
               f"{full[0]['sent']:,} proofs, {rss[-1]:.1f} MiB at {full[-1]['sent']:,} "
               f"(range {min(rss):.1f}-{max(rss):.1f} MiB once full, {rss[-1] - rss[0]:+.1f} MiB)")
        if spread >= 2.0:
            problems.append(f"RSS not flat once full ({spread:.1f} MiB range)")
    else:
        mem = "too few samples past twice the capacity to judge flatness"
        problems.append(mem)
    first = next((r["sent"] for r in rows if r["evictions"] - base["evictions"]), None)
    refused = sent - codes.get(200, 0)
    legit = (f"all {sent:,} valid proofs answered 200" if not refused else
             f"{refused:,} of {sent:,} valid fresh proofs NOT answered 200 "
             f"({last['deny'] - base['deny']:,} denials: "
             + ", ".join(f"{k} {v - base['proofs'].get(k, 0):,}" for k, v in last["proofs"].items()
                         if k != "ok" and v - base["proofs"].get(k, 0)) + ")")
    memory_ok = not problems
    print(f"\nverdict: memory {'OK' if memory_ok else 'PROBLEM'}: {mem}; {ev:,} evictions (first counted at "
          f"{'no sample' if first is None else f'{first:,} proofs'})"
          + ("" if memory_ok else "; " + "; ".join(problems)) + f"; {legit}")
    if refused:
        problems.append("valid proofs refused")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
