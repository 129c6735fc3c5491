#!/usr/bin/env python3
"""A fleet that asks its identity provider once (issue 20): one fake IdP, one jwks-sidecar
mirror, N jwks-sidecar processes whose provider mirrors from the mirror's `/jwks/idp`, all
on 127.0.0.1.

Phases, each with a deadline that fails loudly:
  1. start: every sidecar ready (`/readyz`);
  2. steady state: over `--period` seconds count the IdP's JWKS fetches (target: the
     mirror's alone, at most one per refresh interval, +1) and the sidecars' fetches from
     the mirror;
  3. rotation: the IdP publishes a new key; a token signed by it goes to every sidecar at
     once. Target: every first request is accepted (the kid miss travels up to the mirror,
     which refetches once), within the kid-miss wait; a second round is all 200 too;
  4. mirror outage: the mirror is stopped. Target: every sidecar keeps accepting on its own
     stale keys (jwks_stale = 1), then refuses with 503 once its `max_stale` has passed;
  5. recovery: the mirror comes back on the same port; every sidecar accepts again.

Prints a report (markdown with `--markdown`) and exits 1 when a target is missed.
    python3 bench/fleet.py --bin target/release/jwks-sidecar --sidecars 50
Used by `bash bench/run.sh --only fleet` (50 sidecars) and by the test suite
(scripts/test.d/45-fleet.sh, 8 sidecars).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.server as httpserver
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REFRESH = 2  # seconds: the mirror's and the sidecars' refresh interval (min_refresh too)
KID_MISS_WAIT = 4.0  # the sidecars' kid_miss_wait (covers the mirror's own 2 s)
MAX_STALE = 4  # the sidecars' max_stale


class Failed(Exception):
    pass


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "lib"))
from ports import free_port  # noqa: E402  (never the same port twice in one process)


def http(method: str, url: str, body=None, headers=None, timeout=10.0):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("content-type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def deadline_wait(what: str, seconds: float, cond) -> float:
    start = time.monotonic()
    while True:
        if cond():
            return time.monotonic() - start
        if time.monotonic() - start > seconds:
            raise Failed(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.05)


class Echo(httpserver.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *a):
        pass


class Proc:
    def __init__(self, name: str, cmd: list[str], work: str):
        self.name = name
        self.log = open(os.path.join(work, f"{name}.log"), "wb")
        self.p = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                  start_new_session=True)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def provider_toml(issuer: str, jwks_uri: str, extra: str) -> str:
    return f"""
[[providers]]
name = "idp"
issuer = "{issuer}"
jwks_uri = "{jwks_uri}"
audiences = ["api"]
refresh_interval = "{REFRESH}s"
min_refresh = "{REFRESH}s"
{extra}
"""


def sidecar_toml(listen: int, admin: int, upstream: int, provider: str) -> str:
    return f"""
[log]
format = "json"
[proxy]
listen = "127.0.0.1:{listen}"
upstream = "http://127.0.0.1:{upstream}"
[admin]
listen = "127.0.0.1:{admin}"
{provider}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default="target/release/jwks-sidecar")
    ap.add_argument("--sidecars", type=int, default=50)
    ap.add_argument("--period", type=float, default=10.0, help="steady-state window (s)")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(args.bin):
        print(f"fleet: {args.bin} not found", file=sys.stderr)
        return 1
    work = tempfile.mkdtemp(prefix="fleet-")
    procs: list[Proc] = []
    # socketserver's default listen backlog is 5: fifty sidecars forwarding at once would
    # overflow it and wait out a 1 s SYN retransmit.
    httpserver.ThreadingHTTPServer.request_queue_size = 1024
    echo = httpserver.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    results: dict = {"sidecars": args.sidecars}
    ok = True
    try:
        ok = run(args, work, procs, echo.server_address[1], results)
    except Failed as e:
        results["error"] = str(e)
        ok = False
    finally:
        for p in procs:
            p.stop()
        echo.shutdown()
    report(results, args.markdown)
    if not ok:
        print(f"fleet: FAILED (logs in {work})", file=sys.stderr)
    return 0 if ok else 1


def run(args, work: str, procs: list, upstream: int, res: dict) -> bool:
    n = args.sidecars
    # The IdP.
    idp = Proc("idp", [args.bin, "idp", "--port", "0", "--alg", "ES256"], work)
    procs.append(idp)
    issuer = ""

    def idp_ready():
        nonlocal issuer
        with open(idp.log.name) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{") and "issuer" in line:
                    issuer = json.loads(line)["issuer"]
                    return True
        return False

    deadline_wait("the fake IdP", 10, idp_ready)
    stats = lambda: json.loads(http("GET", f"{issuer}/control/stats")[1])  # noqa: E731

    # The mirror: fetches from the IdP.
    m_listen, m_admin = free_port(), free_port()
    m_cfg = os.path.join(work, "mirror.toml")
    with open(m_cfg, "w") as f:
        f.write(sidecar_toml(m_listen, m_admin, upstream,
                             provider_toml(issuer, f"{issuer}/jwks.json", "")))
    mirror = Proc("mirror", [args.bin, "--config", m_cfg], work)
    procs.append(mirror)
    tier = f"http://127.0.0.1:{m_admin}/jwks/idp"
    deadline_wait("the mirror's readiness", 30,
                  lambda: http("GET", f"http://127.0.0.1:{m_admin}/readyz")[0] == 200)

    # The fleet: mirrors from the mirror.
    fleet = []
    t0 = time.monotonic()
    for i in range(n):
        listen, admin = free_port(), free_port()
        cfg = os.path.join(work, f"sidecar-{i}.toml")
        extra = f'kid_miss_wait = "{KID_MISS_WAIT}s"\nmax_stale = "{MAX_STALE}s"'
        with open(cfg, "w") as f:
            f.write(sidecar_toml(listen, admin, upstream, provider_toml(issuer, tier, extra)))
        procs.append(Proc(f"sidecar-{i}", [args.bin, "--config", cfg], work))
        fleet.append((listen, admin))
    pool = cf.ThreadPoolExecutor(max_workers=min(64, n))

    def all_of(f):
        return list(pool.map(f, fleet))

    deadline_wait("every sidecar's readiness", 60, lambda: all(
        st == 200 for st in all_of(lambda s: http("GET", f"http://127.0.0.1:{s[1]}/readyz")[0])))
    res["ready_s"] = time.monotonic() - t0

    def scrape(s):
        return http("GET", f"http://127.0.0.1:{s[1]}/metrics")[1]

    def fleet_fetches():
        total = 0.0
        for m in all_of(scrape):
            for r in ("ok", "not_modified"):
                total += metric(m, f'jwks_sidecar_jwks_fetch_total{{provider="idp",result="{r}"}}')
        return total

    # Steady state.
    idp0, fleet0 = stats()["jwks_fetches"], fleet_fetches()
    time.sleep(args.period)
    idp1, fleet1 = stats()["jwks_fetches"], fleet_fetches()
    res["period_s"] = args.period
    res["idp_fetches"] = idp1 - idp0
    res["fleet_fetches"] = fleet1 - fleet0
    idp_limit = args.period / REFRESH + 1
    targets = []
    targets.append(("steady state: IdP fetches <= period / refresh + 1 (the mirror's alone)",
                    res["idp_fetches"] <= idp_limit, f"{res['idp_fetches']} <= {idp_limit:.0f}"))

    # Rotation.
    before = stats()["jwks_fetches"]
    status, _ = http("POST", f"{issuer}/control/rotate", {"alg": "ES256", "kid": "rotated-in"})
    if status != 200:
        raise Failed(f"rotate: {status}")
    status, body = http("POST", f"{issuer}/token", {
        "claims": {"iss": issuer, "aud": "api", "sub": "fleet", "exp": int(time.time()) + 600},
        "kid": "rotated-in"})
    if status != 200:
        raise Failed(f"token: {status} {body}")
    token = json.loads(body)["token"] if body.startswith("{") else body.strip()
    auth = {"authorization": f"Bearer {token}"}

    def timed(s):
        t = time.monotonic()
        st, _ = http("GET", f"http://127.0.0.1:{s[0]}/rotation", headers=auth)
        return st, time.monotonic() - t

    t_rot = time.monotonic()
    first = all_of(timed)
    res["rotation_all_accepted_s"] = time.monotonic() - t_rot
    res["rotation_first_statuses"] = sorted({st for st, _ in first})
    res["rotation_slowest_first_s"] = max(d for _, d in first)
    res["rotation_median_first_s"] = sorted(d for _, d in first)[len(first) // 2]
    outcomes: dict = {}
    for m in all_of(scrape) + [http("GET", f"http://127.0.0.1:{m_admin}/metrics")[1]]:
        for line in m.splitlines():
            if line.startswith("jwks_sidecar_jwks_kid_miss_total{"):
                result = line.split('result="')[1].split('"')[0]
                outcomes[result] = outcomes.get(result, 0) + float(line.split()[-1])
    res["rotation_kid_miss_outcomes"] = {k: int(v) for k, v in sorted(outcomes.items()) if v}
    second = all_of(timed)
    res["rotation_second_statuses"] = sorted({st for st, _ in second})
    res["rotation_median_second_s"] = sorted(d for _, d in second)[len(second) // 2]
    res["rotation_slowest_second_s"] = max(d for _, d in second)
    res["rotation_idp_fetches"] = stats()["jwks_fetches"] - before
    targets.append(("rotation: every sidecar's first request with the new kid is accepted",
                    all(st == 200 for st, _ in first),
                    f"statuses {res['rotation_first_statuses']}"))
    targets.append(("rotation: within the kid-miss wait",
                    res["rotation_slowest_first_s"] <= KID_MISS_WAIT,
                    f"slowest {res['rotation_slowest_first_s']:.3f} s <= {KID_MISS_WAIT} s"))
    targets.append(("rotation: no 401 after the first request",
                    all(st == 200 for st, _ in second), f"statuses {res['rotation_second_statuses']}"))
    # The mirror keeps its own schedule meanwhile: one fetch per refresh interval, plus the
    # one kid-miss refetch for the whole fleet.
    window = time.monotonic() - t_rot
    rot_limit = int(window / REFRESH) + 1 + 1
    targets.append(("rotation: IdP fetches <= the mirror's scheduled ones + 1 kid-miss refetch "
                    "for the whole fleet", res["rotation_idp_fetches"] <= rot_limit,
                    f"{res['rotation_idp_fetches']} <= {rot_limit} in {window:.1f} s"))

    # Mirror outage: the sidecars ride it out on stale keys, then drop them at max_stale.
    mirror.stop()
    t_out = time.monotonic()
    refused_early = []

    def stale_and_serving(s):
        st, _ = http("GET", f"http://127.0.0.1:{s[0]}/outage", headers=auth)
        stale = metric(scrape(s), 'jwks_sidecar_jwks_stale{provider="idp"}') == 1.0
        return st, stale

    # Until every sidecar has said its keys are stale, every request must still pass.
    def all_stale():
        seen = all_of(stale_and_serving)
        refused_early.extend(st for st, _ in seen if st != 200 and not _)
        return all(stale for _, stale in seen)

    res["outage_all_stale_s"] = deadline_wait("every sidecar to serve stale keys",
                                              REFRESH + MAX_STALE + 20, all_stale)
    serving = [st for st, _ in all_of(stale_and_serving)]
    res["outage_refused_while_fresh"] = len(refused_early)
    targets.append(("mirror outage: no refusal while keys were fresh", not refused_early,
                    f"{len(refused_early)} refused"))
    dropped = deadline_wait(
        "every sidecar to drop its keys after max_stale", REFRESH + MAX_STALE + 20,
        lambda: all(st == 503 for st, _ in all_of(stale_and_serving)))
    res["outage_dropped_s"] = res["outage_all_stale_s"] + dropped
    res["outage_statuses_when_stale"] = sorted(set(serving))
    targets.append(("mirror outage: stale keys served, then 503 past max_stale",
                    res["outage_dropped_s"] >= 1.0,
                    f"all stale after {res['outage_all_stale_s']:.1f} s, all 503 after "
                    f"{res['outage_dropped_s']:.1f} s (max_stale {MAX_STALE} s, refresh {REFRESH} s)"))
    del t_out

    # Recovery: the mirror comes back on the same port.
    mirror2 = Proc("mirror-2", [args.bin, "--config", m_cfg], work)
    procs.append(mirror2)
    res["recovery_s"] = deadline_wait(
        "every sidecar to accept again after the mirror is back", 70,
        lambda: all(st == 200 for st, _ in all_of(stale_and_serving)))
    targets.append(("recovery: every sidecar accepts again", True, f"{res['recovery_s']:.1f} s"))
    res["targets"] = targets
    return all(t[1] for t in targets)


def report(res: dict, markdown: bool) -> None:
    n = res["sidecars"]
    lines = []
    if markdown:
        lines.append(f"### Fleet: 1 IdP, 1 mirror, {n} sidecars on loopback\n")
        lines.append(f"Refresh {REFRESH} s at both tiers, sidecar kid_miss_wait {KID_MISS_WAIT} s, "
                     f"max_stale {MAX_STALE} s.\n")
        lines.append("| measure | value |\n|---|---|")
        row = lambda k, v: lines.append(f"| {k} | {v} |")  # noqa: E731
    else:
        lines.append(f"fleet: 1 IdP, 1 mirror, {n} sidecars")
        row = lambda k, v: lines.append(f"  {k}: {v}")  # noqa: E731
    if "ready_s" in res:
        row("all sidecars ready", f"{res['ready_s']:.1f} s")
    if "idp_fetches" in res:
        row(f"IdP JWKS fetches in {res['period_s']:.0f} s", res["idp_fetches"])
        row(f"sidecar fetches from the mirror in {res['period_s']:.0f} s", f"{res['fleet_fetches']:.0f}")
    if "rotation_first_statuses" in res:
        row("rotation: first-request statuses", res["rotation_first_statuses"])
        row("rotation: first request, median / slowest",
            f"{res['rotation_median_first_s'] * 1000:.0f} / {res['rotation_slowest_first_s'] * 1000:.0f} ms")
        row("rotation: second request (key known), median / slowest",
            f"{res['rotation_median_second_s'] * 1000:.0f} / {res['rotation_slowest_second_s'] * 1000:.0f} ms")
        row("rotation: kid-miss outcomes (sidecars and mirror)", res["rotation_kid_miss_outcomes"])
        row("rotation: all sidecars accepted after", f"{res['rotation_all_accepted_s'] * 1000:.0f} ms")
        row("rotation: IdP fetches", res["rotation_idp_fetches"])
    if "outage_all_stale_s" in res:
        row("mirror outage: all sidecars stale after", f"{res['outage_all_stale_s']:.1f} s")
        row("mirror outage: all 503 after", f"{res['outage_dropped_s']:.1f} s")
    if "recovery_s" in res:
        row("mirror back: all accept after", f"{res['recovery_s']:.1f} s")
    for name, passed, detail in res.get("targets", []):
        row(("met: " if passed else "MISSED: ") + name, detail)
    if "error" in res:
        row("error", res["error"])
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
