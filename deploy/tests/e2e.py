#!/usr/bin/env python3
"""End-to-end checks of the deployment artefacts against the real binary, all on loopback.

  e2e.py healthcheck BINARY
      `jwks-sidecar healthcheck` exits 0 against a live admin listener and non-zero against
      a port nobody listens on.
  e2e.py rules-coverage ALERTS_YAML TESTS_YAML
      Every alert of ALERTS_YAML is expected firing in at least one promtool test case and
      expected silent (exp_alerts: []) in at least one.
  e2e.py run BINARY [--out DIR]
      The project's fake IdP (`BINARY idp`: JWKS over http on 127.0.0.1, tokens minted over
      its API), an echo app, the sidecar and a real Prometheus (scrape and rule evaluation
      every second, deploy/prometheus/alerts.yaml as is). Scenario: good, expired, tampered,
      unknown-kid, unknown-issuer, spoofed-header, public-path, bad-path and no-token
      requests; a provider whose IdP never answers (503); a key rotation; the app going away
      (502); then the IdP going down. Then:
        - `promtool check metrics` passes on a real /metrics scrape;
        - every PromQL expression of deploy/grafana/jwks-sidecar.json returns data;
        - JwksSidecarJwksFetchFailing goes pending (or firing) for the provider whose IdP
          went down, and JwksSidecarNoKeys / JwksSidecarServing503 for the one that never
          answered;
        - every metric named in the dashboard and the alerts is exported: in the scrape, or
          (for labelled metrics this scenario cannot make appear) registered in
          src/metrics.rs. A dashboard expression may only lack data when every metric it
          names is registered in src/metrics.rs but not yet updated anywhere else in src/
          (reported as PENDING, so the check tightens by itself once the code uses it).
  e2e.py mirror BINARY MIRROR_RENDER SIDECAR_RENDER [--out DIR]
      The JWKS-mirror deployment examples, end to end. MIRROR_RENDER is the rendered mirror
      (helm template of helm/examples/mirror.yaml, or kubectl kustomize of
      deploy/overlays/jwks-mirror), SIDECAR_RENDER the rendered sidecars that use it
      (helm/examples/sidecar.yaml + sidecar-via-mirror.yaml). First, statically: every
      sidecar provider's jwks_uri is http://<the mirror Service>.<namespace>.svc:<its admin
      port>/jwks/<a provider the mirror has, same name> with allow_insecure_http; the mirror's
      NetworkPolicy admits the sidecar pods' labels on the admin port and nobody unlabelled;
      the sidecars' egress policy (if any) lets them reach the mirror's pods on that port.
      Then on loopback: the fake IdP; the mirror with its rendered config (listeners on
      127.0.0.1 free ports, each provider's key source replaced by the fake IdP's jwks_uri);
      the sidecar with its rendered config (its jwks_uri hosts replaced by the mirror's admin
      address, the upstream by an echo app). The sidecar must become ready, its /providers
      must name the mirror URLs, a token from the fake IdP must pass it (keys went IdP ->
      mirror -> sidecar), the mirror's own proxy must refuse that token, and the sidecar's
      rendered config without allow_insecure_http must be refused by the binary.
Processes started here are stopped on exit.
"""
import atexit
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(ROOT, "deploy/grafana/jwks-sidecar.json")
ALERTS = os.path.join(ROOT, "deploy/prometheus/alerts.yaml")
METRICS_RS = os.path.join(ROOT, "src/metrics.rs")
PREFIX = "jwks_sidecar_"

procs = []


def log(msg):
    print(f"   {msg}", flush=True)


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "lib"))
from ports import free_port  # noqa: E402  (never the same port twice in one process)


def http_get(url, headers=None, timeout=5):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_post(url, doc, timeout=5):
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_for(pred, timeout, what, interval=0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            v = pred()
            if v:
                return v
        except OSError:
            pass
        time.sleep(interval)
    raise SystemExit(f"FAIL timed out after {timeout}s waiting for {what}")


def stop_all():
    for p in reversed(procs):
        if p.poll() is None:
            p.terminate()
    for p in reversed(procs):
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# --- healthcheck ------------------------------------------------------------------------------
def cmd_healthcheck(binary):
    admin, proxy = free_port(), free_port()
    with tempfile.TemporaryDirectory() as d:
        cfg = os.path.join(d, "config.toml")
        with open(cfg, "w") as f:
            f.write(
                f'[proxy]\nlisten = "127.0.0.1:{proxy}"\nupstream = "http://127.0.0.1:9"\n'
                f'[admin]\nlisten = "127.0.0.1:{admin}"\n'
                '[[providers]]\nname = "inline"\nissuer = "https://inline.example/"\naudiences = ["a"]\n'
                'jwks = { keys = [{ kty = "OKP", crv = "Ed25519", kid = "k1", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }] }\n'
            )
        errf = open(os.path.join(d, "stderr"), "w+")
        p = subprocess.Popen([binary, "--config", cfg], stderr=errf)
        procs.append(p)
        try:
            try:
                wait_for(lambda: p.poll() is not None or http_get(f"http://127.0.0.1:{admin}/readyz")[0] == 200, 30, "the sidecar to be ready")
            finally:
                if p.poll() is not None:
                    errf.seek(0)
                    raise SystemExit(f"FAIL the sidecar exited ({p.returncode}):\n{errf.read()[-2000:]}")
            for path in ("/healthz", "/readyz"):
                r = subprocess.run([binary, "healthcheck", "--url", f"http://127.0.0.1:{admin}{path}"], capture_output=True, timeout=10)
                if r.returncode != 0:
                    raise SystemExit(f"FAIL healthcheck {path} exited {r.returncode} against a live admin listener")
            r = subprocess.run([binary, "healthcheck", "--url", f"http://127.0.0.1:{free_port()}/readyz"], capture_output=True, timeout=10)
            if r.returncode == 0:
                raise SystemExit("FAIL healthcheck exited 0 against a closed port")
            log("healthcheck: 0 for /healthz and /readyz of a live sidecar, non-zero for a closed port")
        finally:
            stop_all()


# --- rules coverage -----------------------------------------------------------------------------
def cmd_rules_coverage(alerts_path, tests_path):
    import yaml

    alerts = [r["alert"] for g in yaml.safe_load(open(alerts_path))["groups"] for r in g["rules"] if "alert" in r]
    tests = yaml.safe_load(open(tests_path))["tests"]
    firing, silent = set(), set()
    for t in tests:
        for a in t.get("alert_rule_test", []):
            (firing if a.get("exp_alerts") else silent).add(a["alertname"])
    bad = [a for a in alerts if a not in firing or a not in silent]
    for a in alerts:
        log(f"{a}: firing {'yes' if a in firing else 'NO'}, not firing {'yes' if a in silent else 'NO'}")
    for a in alerts:
        ann = next(r for g in yaml.safe_load(open(alerts_path))["groups"] for r in g["rules"] if r.get("alert") == a)["annotations"]
        if not ann.get("runbook"):
            bad.append(f"{a} (no runbook annotation)")
    if bad:
        raise SystemExit(f"FAIL alerts lacking a firing and a not-firing test, or a runbook: {bad}")
    log(f"{len(alerts)} alerts, each tested firing and not firing")


# --- the run ---------------------------------------------------------------------------------------
class Idp:
    """The project's fake IdP (`jwks-sidecar idp`, src/demo/idp.rs) as a child process on
    127.0.0.1: a JWKS that can rotate keys and go down, and tokens minted by its POST /token,
    so this suite carries no key generation or signing of its own (one fake IdP for every suite).

    Two keys: an RS256 one that signs, and an ES256 one that provider main (algorithms =
    ["RS256"]) must skip, so jwks_skipped_keys_total has data for the dashboard.
    deploy/image/test.py imports this class: Idp(port).start(), .port and .token(**claims)."""

    def __init__(self, port=0, binary=None, log_path=None):
        self.port = port  # 0: any free port, read back from the IdP's JSON line
        self.binary = binary or os.environ.get("JWKS_SIDECAR_BIN") or os.path.join(ROOT, "target/debug/jwks-sidecar")
        self.log_path = log_path
        self.proc = None
        self.issuer = self.jwks_uri = self.kid = None

    def start(self, timeout=30):
        if not os.access(self.binary, os.X_OK):
            raise SystemExit(f"FAIL {self.binary} not found: the fake IdP is `jwks-sidecar idp` (cargo build, or set JWKS_SIDECAR_BIN)")
        errf = open(self.log_path, "w+b") if self.log_path else tempfile.TemporaryFile()
        env = {k: v for k, v in os.environ.items() if not k.startswith("JWKS_SIDECAR_") and k != "RUST_LOG"}
        self.proc = p = subprocess.Popen(
            [self.binary, "idp", "--port", str(self.port), "--alg", "RS256", "--alg", "ES256"],
            stdout=subprocess.PIPE, stderr=errf, env=env)
        procs.append(p)
        # importers (deploy/image/test.py) do not call stop_all; the process must not outlive them
        atexit.register(self.stop)
        # readline blocks; a thread bounds the wait for the one JSON line printed once listening
        line = []
        reader = threading.Thread(target=lambda: line.append(p.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)

        def fail(why):
            self.stop()
            errf.seek(0)
            raise SystemExit(f"FAIL the fake IdP ({self.binary} idp) {why}:\n{errf.read()[-2000:].decode(errors='replace')}")

        if not line:
            fail(f"printed no JSON line within {timeout}s")
        if not line[0].strip():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
            fail(f"exited ({p.returncode}) before printing its JSON line")
        try:
            info = json.loads(line[0])
            self.issuer, self.jwks_uri = info["issuer"], info["jwks_uri"]
            self.port = urllib.parse.urlsplit(self.jwks_uri).port
            # kids follow the --alg order: <alg>-<position>
            self.kid = next(k for k in info["kids"] if k.startswith("rs256-"))
        except (ValueError, KeyError, StopIteration) as e:
            fail(f"printed an unexpected first line ({e!r}): {line[0][:200]!r}")

    def stop(self):
        """Ends the process: its port then refuses connections, which is what "down" means here."""
        p = self.proc
        if p and p.poll() is None:
            p.terminate()
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def rotate(self, kid, keep_old=True):
        """Publishes a new RS256 key `kid` (first in the JWKS); keep_old=False unpublishes the rest."""
        status, body = http_post(f"{self.issuer}/control/rotate", {"alg": "RS256", "kid": kid, "keep_old": keep_old})
        if status != 200:
            raise SystemExit(f"FAIL the fake IdP refused to rotate in {kid} ({status}): {body[:200]!r}")

    def token(self, kid=None, sign_kid=None, **claims):
        """A token for provider main (alice, audience api, 10 minutes) with `claims` over those,
        signed by key sign_kid (default: kid, else the first RS256 key) and naming kid (default:
        the signing key's). Minted by the IdP process, so only while it is up."""
        now = int(time.time())
        payload = {"iss": "https://idp.test/", "aud": "api", "sub": "alice", "iat": now, "exp": now + 600}
        payload.update(claims)
        req = {"claims": payload, "kid": sign_kid or kid or self.kid}
        if kid:
            req["header"] = {"kid": kid}
        status, body = http_post(f"{self.issuer}/token", req)
        if status != 200:
            raise SystemExit(f"FAIL the fake IdP did not mint a token ({status}): {body[:200]!r}")
        return body.decode()


def serve(handler, port):
    srv = ThreadingHTTPServer(("127.0.0.1", port), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def stop_server(srv):
    if srv:
        srv.shutdown()
        srv.server_close()


def echo_handler():
    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    return H


class Prom:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def query(self, q):
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": q})
        status, body = http_get(url, timeout=10)
        data = json.loads(body)
        if status != 200 or data.get("status") != "success":
            raise SystemExit(f"FAIL Prometheus rejected {q!r}: {data.get('error', body[:200])}")
        return data["data"]["result"]


def metric_names(expr):
    return set(re.findall(r"\b(" + PREFIX + r"[a-zA-Z0-9_]+)", expr))


def source_registry():
    """Metric names registered in src/metrics.rs, and for each the struct field (if known)."""
    text = open(METRICS_RS).read()
    names = set()
    for pat in (r'(?:counter|int_gauge|gauge)\(\s*&reg,\s*"(\w+)"', r'histogram\(\s*"(\w+)"', r'(?:HistogramOpts|Opts)::new\(\s*"(\w+)"'):
        names |= {PREFIX + n for n in re.findall(pat, text)}
    fields = {PREFIX + n: f for f, n in re.findall(r'(\w+):\s*(?:counter|int_gauge|gauge)\(\s*&reg,\s*"(\w+)"', text)}
    return names, fields


def field_used_elsewhere(field):
    for dirpath, _, files in os.walk(os.path.join(ROOT, "src")):
        for fn in files:
            path = os.path.join(dirpath, fn)
            if fn.endswith(".rs") and path != METRICS_RS and re.search(r"\." + re.escape(field) + r"\b", open(path).read()):
                return True
    return False


def dashboard_queries():
    dash = json.load(open(DASHBOARD))
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    variables = []
    for v in dash.get("templating", {}).get("list", []):
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and q:
            variables.append((f"variable ${v['name']}", q))
    return out, variables


def substitute(expr):
    return (expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace("$__range", "5m")
            .replace('"$job"', '".*"').replace('"$provider"', '".*"'))


def check_assertion(assertion, admin):
    """The signed identity the app received, verified as an app would, with an independent
    library (PyJWT) against the sidecar's /assertion/jwks.json: valid with the right
    issuer, audience and subject; a tampered copy refused; the same assertion refused once
    its ttl (2 s) has passed (PyJWT's clock moved 3 s ahead with a negative leeway, rather
    than sleeping). Returns the failures."""
    import jwt  # PyJWT

    fails = []
    if not assertion or assertion == "forged":
        return [f"the app did not receive the sidecar's assertion: {assertion!r}"]
    keys = jwt.PyJWKClient(f"{admin}/assertion/jwks.json")
    key = keys.get_signing_key_from_jwt(assertion).key
    try:
        claims = jwt.decode(assertion, key, algorithms=["ES256"], audience="app", issuer="jwks-sidecar")
        if claims.get("sub") != "alice" or claims.get("provider") != "main":
            fails.append(f"assertion claims: {claims}")
    except jwt.PyJWTError as e:
        fails.append(f"PyJWT refused the sidecar's assertion: {e}")
    head, payload, sig = assertion.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged["sub"] = "mallory"
    tampered = ".".join([head, base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode(), sig])
    try:
        jwt.decode(tampered, key, algorithms=["ES256"], audience="app")
        fails.append("PyJWT accepted a tampered assertion")
    except jwt.InvalidSignatureError:
        pass
    try:
        # leeway -3: "now" is 3 s later; iat is then in the past, so only exp is judged.
        jwt.decode(assertion, key, algorithms=["ES256"], audience="app", leeway=-3,
                   options={"verify_iat": False})
        fails.append("PyJWT accepted the assertion 3 s later, past its 2 s ttl")
    except jwt.ExpiredSignatureError:
        pass
    return fails


def check_assertion_rotation(get_assertion, admin):
    """Across a scheduled rotation of the sidecar's key (rotate_every 4 s, overlap 3 s), as an
    app with PyJWT's caching PyJWKClient: the assertion after the rotation has a new kid and
    verifies with the same client (it refetches the key set for the unknown kid); right after
    the rotation a fresh fetch still holds the retired key (the earlier assertion verifies);
    the retired key leaves the set once the overlap ends. Returns the failures."""
    import jwt  # PyJWT

    def kid(a):
        return jwt.get_unverified_header(a).get("kid")

    fails = []
    client = jwt.PyJWKClient(f"{admin}/assertion/jwks.json", cache_keys=True)
    before = get_assertion()
    try:
        jwt.decode(before, client.get_signing_key_from_jwt(before).key, algorithms=["ES256"], audience="app")
    except jwt.PyJWTError as e:
        return [f"PyJWT refused the assertion before the rotation: {e}"]
    deadline = time.time() + 20
    after = before
    while kid(after) == kid(before) and time.time() < deadline:
        time.sleep(0.1)
        after = get_assertion()
    if kid(after) == kid(before):
        return [f"the assertion key did not rotate within 20 s (kid {kid(before)})"]
    try:
        jwt.decode(after, client.get_signing_key_from_jwt(after).key, algorithms=["ES256"], audience="app")
    except jwt.PyJWTError as e:
        fails.append(f"PyJWT (same client) refused the assertion after the rotation: {e}")
    try:
        fresh = jwt.PyJWKClient(f"{admin}/assertion/jwks.json", cache_keys=False)
        jwt.decode(before, fresh.get_signing_key_from_jwt(before).key, algorithms=["ES256"], audience="app",
                   options={"verify_exp": False})
    except jwt.PyJWTError as e:
        fails.append(f"right after the rotation, the retired key is not published: {e}")

    def published():
        with urllib.request.urlopen(f"{admin}/assertion/jwks.json", timeout=5) as r:
            return [k.get("kid") for k in json.load(r)["keys"]]

    deadline = time.time() + 20
    while kid(before) in published() and time.time() < deadline:
        time.sleep(0.2)
    if kid(before) in published():
        fails.append("the retired key was still published 20 s after the rotation (overlap 3 s)")
    log(f"assertion key rotated {kid(before)[:8]}.. -> {kid(after)[:8]}.., verified across it with PyJWT")
    return fails


def cmd_run(binary, out_dir):
    import yaml

    if not shutil.which("prometheus") or not shutil.which("promtool"):
        raise SystemExit("FAIL prometheus/promtool not installed")
    work = tempfile.mkdtemp(prefix="jwks-e2e-")
    out_dir = out_dir or work
    ports = {k: free_port() for k in ("down", "echo", "proxy", "admin", "prom")}
    idp = Idp(binary=binary, log_path=os.path.join(out_dir, "idp.log"))
    idp.start()
    echo = serve(echo_handler(), ports["echo"])
    cfg = f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
upstream = "http://127.0.0.1:{ports['echo']}"
public_paths = ["/public"]
upstream_connect_timeout = "1s"
upstream_timeout = "5s"
shutdown_grace = "1s"

[admin]
listen = "127.0.0.1:{ports['admin']}"

[log]
format = "json"

[assertion]
enabled = true
audience = "app"
ttl = "2s"
claims = ["sub"]
rotate_every = "4s"
overlap = "3s"

[[providers]]
name = "main"
issuer = "https://idp.test/"
jwks_uri = "{idp.jwks_uri}"
audiences = ["api"]
algorithms = ["RS256"]
refresh_interval = "2s"
min_refresh = "1s"
kid_miss_min_interval = "1s"
fetch_timeout = "1s"
[providers.claim_headers]
sub = "x-jwt-sub"

[[providers]]
name = "down"
issuer = "https://down.test/"
jwks_uri = "http://127.0.0.1:{ports['down']}/jwks.json"
audiences = ["api"]
refresh_interval = "2s"
min_refresh = "1s"
fetch_timeout = "1s"
"""
    cfg_path = os.path.join(work, "config.toml")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWKS_SIDECAR_") and k != "RUST_LOG"}
    admin = f"http://127.0.0.1:{ports['admin']}"
    proxy = f"http://127.0.0.1:{ports['proxy']}"
    log_path = os.path.join(out_dir, "sidecar.log")
    # Fast-refresh keys (min_refresh, kid_miss_min_interval) that an older build does not know
    # are dropped when, and only when, the binary names them as unknown.
    optional = {"min_refresh", "kid_miss_min_interval"}
    while True:
        open(cfg_path, "w").write(cfg)
        sidecar_log = open(log_path, "w")
        p = subprocess.Popen([binary, "--config", cfg_path], stdout=sidecar_log, stderr=subprocess.STDOUT, env=env)
        procs.append(p)
        up = wait_for(lambda: p.poll() is not None or http_get(admin + "/healthz")[0] == 200, 30, "the sidecar's /healthz")
        if p.poll() is None:
            break
        text = open(log_path).read()
        m = re.search(r"unknown field(?::? found)? `(\w+)`", text)
        if not (m and m.group(1) in optional):
            raise SystemExit(f"FAIL the sidecar exited at start:\n{text[-2000:]}")
        optional.discard(m.group(1))
        cfg = re.sub(rf"(?m)^{m.group(1)} = .*\n", "", cfg)
        log(f"NOTE: this build does not know {m.group(1)}; running without it")
    wait_for(lambda: any(p["name"] == "main" and p["ready"] for p in json.loads(http_get(admin + "/providers")[1])["providers"]), 30, "provider main's keys")
    log(f"sidecar up: proxy {proxy}, admin {admin}; provider main ready, provider down never answers")

    prom_cfg = os.path.join(work, "prometheus.yml")
    yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [ALERTS],
        "scrape_configs": [{"job_name": "jwks-sidecar", "static_configs": [{"targets": [f"127.0.0.1:{ports['admin']}"]}]}],
    }, open(prom_cfg, "w"))
    prom_log = open(os.path.join(out_dir, "prometheus.log"), "w")
    procs.append(subprocess.Popen([
        "prometheus", f"--config.file={prom_cfg}", f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
        f"--web.listen-address=127.0.0.1:{ports['prom']}", "--log.level=warn",
    ], stdout=prom_log, stderr=subprocess.STDOUT, cwd=work))
    prom = Prom(ports["prom"])
    wait_for(lambda: http_get(prom.base + "/-/ready")[0] == 200, 30, "Prometheus to be ready")
    wait_for(lambda: prom.query('up{job="jwks-sidecar"} == 1'), 30, "Prometheus to scrape the sidecar")
    log(f"Prometheus {prom.base} scraping the admin listener every 1s, rules: deploy/prometheus/alerts.yaml")

    # --- scenario -------------------------------------------------------------------------
    expect_fail = []

    def req(name, want, path="/orders", token=None, headers=None):
        h = dict(headers or {})
        if token:
            h["Authorization"] = f"Bearer {token}"
        status, body = http_get(proxy + path, headers=h)
        if status != want:
            expect_fail.append(f"{name}: got {status}, want {want}: {body[:160]!r}")
        return status, body

    good = idp.token()
    # minted now: tokens come from the IdP process, and phase 4 stops it
    down = idp.token(iss="https://down.test/")
    for _ in range(20):
        req("good token", 200, token=good)
    status, body = req("spoofed identity header", 200, token=good,
                       headers={"X-JWT-Sub": "admin", "X-JWT-Assertion": "forged"})
    if status == 200 and json.loads(body).get("x-jwt-sub") != "alice":
        expect_fail.append(f"spoofed header reached the app: {body[:200]!r}")
    if status == 200:
        expect_fail.extend(check_assertion(json.loads(body).get("x-jwt-assertion"), admin))

    def current_assertion():
        status, body = http_get(proxy + "/orders", headers={"Authorization": f"Bearer {good}"})
        return json.loads(body).get("x-jwt-assertion") if status == 200 else f"status {status}"

    expect_fail.extend(check_assertion_rotation(current_assertion, admin))
    for _ in range(5):
        req("no token", 401)
        req("expired", 401, token=idp.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200))
        req("tampered signature", 401, token=good[:-6] + ("AAAAAA" if not good.endswith("AAAAAA") else "BBBBBB"))
        req("unknown issuer", 401, token=idp.token(iss="https://other.test/"))
        req("public path", 200, path="/public/status")
    for _ in range(3):
        req("unknown kid", 401, token=idp.token(kid="k9", sign_kid=idp.kid))
        req("provider without keys", 503, token=down)
        req("bad path", 400, path="/a/%2e%2e%2F..%2Fetc")
    req("claim with a control character", 200, token=idp.token(sub="bad\u0001value"))
    log("phase 1: good, spoofed, no-token, expired, tampered, unknown-issuer, unknown-kid, public, bad-path and no-keys requests sent")

    idp.rotate("k2")

    def mirrored_kids(provider):
        # the kids the sidecar serves for provider, parsed: a substring test on the body would
        # also match "k2" inside the base64 of the first key's modulus and not wait at all
        status, body = http_get(admin + "/jwks/" + provider)
        return {k["kid"] for k in json.loads(body)["keys"]} if status == 200 else set()

    wait_for(lambda: "k2" in mirrored_kids("main"), 30, "the rotated key k2 to be mirrored (kid k2 in /jwks/main)")
    req("token signed by the rotated key", 200, token=idp.token(kid="k2"))
    log("phase 2: IdP rotated in k2; mirrored; a k2 token is accepted")

    stop_server(echo)
    req("app down", 502, token=good)
    echo = serve(echo_handler(), ports["echo"])
    req("app back", 200, token=good)
    log("phase 3: the app went away (502) and came back")

    idp.stop()
    down_at = time.time()
    log("phase 4: the IdP is down; waiting for JwksSidecarJwksFetchFailing to go pending")

    def active(alert, prov):
        return prom.query(f'ALERTS{{alertname="{alert}",provider="{prov}",alertstate=~"pending|firing"}}')

    def fetch_alert():
        # traffic goes on: cached keys still verify, the keyless provider still gets 503
        req("good token while the IdP is down (cached keys)", 200, token=good)
        req("provider without keys", 503, token=down)
        return active("JwksSidecarJwksFetchFailing", "main")

    got = wait_for(fetch_alert, 120, "JwksSidecarJwksFetchFailing{provider=\"main\"} to go pending", interval=1)
    log(f"JwksSidecarJwksFetchFailing{{provider=\"main\"}} is {got[0]['metric']['alertstate']} {time.time() - down_at:.0f}s after the IdP went down")

    problems = list(expect_fail)
    for alert, prov in (("JwksSidecarNoKeys", "down"), ("JwksSidecarServing503", "down")):
        try:
            r = wait_for(lambda: fetch_alert() and active(alert, prov), 30, f"{alert} to go pending", interval=1)
            log(f"{alert}{{provider=\"{prov}\"}} is {r[0]['metric']['alertstate']}")
        except SystemExit:
            problems.append(f"{alert}{{provider=\"{prov}\"}} is neither pending nor firing")
    quiet = prom.query('ALERTS{alertname="JwksSidecarJwksFetchFailing",provider="main",alertstate=~"pending|firing"} offset 60s')
    if quiet and time.time() - down_at < 60:
        problems.append("JwksSidecarJwksFetchFailing was already active before the IdP went down")

    # --- scrape: promtool check metrics -------------------------------------------------------
    status, scrape = http_get(admin + "/metrics")
    scrape_path = os.path.join(out_dir, "metrics.txt")
    open(scrape_path, "wb").write(scrape)
    r = subprocess.run(["promtool", "check", "metrics"], input=scrape, capture_output=True)
    if r.returncode != 0:
        problems.append("promtool check metrics: " + (r.stdout + r.stderr).decode().strip())
    else:
        log(f"promtool check metrics: clean ({len(scrape.splitlines())} lines scraped, saved as metrics.txt)")
    families = set(re.findall(r"^# TYPE (\S+) \S+", scrape.decode(), re.M))

    # --- dashboard queries -------------------------------------------------------------------------
    registered, fields = source_registry()
    pending = {n for n in registered if n in fields and not field_used_elsewhere(fields[n])}
    queries, variables = dashboard_queries()
    ok = pend = 0
    for title, expr in queries:
        result = prom.query(substitute(expr))
        if result:
            ok += 1
            continue
        absent = {n for n in metric_names(expr) if re.sub(r"_(bucket|sum|count)$", "", n) not in families and n not in families}
        if absent and absent <= pending:
            pend += 1
            log(f"PENDING dashboard '{title}': {', '.join(sorted(absent))} registered in src/metrics.rs but never updated in src/ yet")
        else:
            problems.append(f"dashboard '{title}': no data for {expr}")
    for title, q in variables:
        m = re.match(r"label_values\((.*),\s*(\w+)\)$", q.strip())
        sel = substitute(m.group(1)) if m else None
        if not sel or not prom.query(f"count by ({m.group(2)}) ({sel})"):
            problems.append(f"dashboard {title}: no values for {q}")
    log(f"dashboard: {ok} of {len(queries)} PromQL expressions return data, {pend} pending on unwired metrics, {len(variables)} variables resolve")

    # --- metric names in the dashboard and alerts ---------------------------------------------------
    alert_exprs = [r["expr"] for g in yaml.safe_load(open(ALERTS))["groups"] for r in g["rules"]]
    named = set()
    for _, e in queries + variables:
        named |= metric_names(e)
    for e in alert_exprs:
        named |= metric_names(e)
    in_scrape = in_source = 0
    for n in sorted(named):
        base = re.sub(r"_(bucket|sum|count)$", "", n)
        if n in families or base in families:
            in_scrape += 1
        elif n in registered or base in registered:
            in_source += 1
            log(f"{n}: not in this scenario's scrape; registered in src/metrics.rs")
        else:
            problems.append(f"metric {n} (dashboard/alerts) is not exported by the binary")
    log(f"metric names: {len(named)} named in the dashboard and alerts; {in_scrape} seen in the scrape, {in_source} registered in src/metrics.rs only")

    if problems:
        for p in problems:
            print(f"FAIL {p}")
        print(f"   logs: {out_dir}/sidecar.log, {out_dir}/prometheus.log, {out_dir}/idp.log")
        raise SystemExit(1)
    log("e2e: all checks passed")


# --- JWKS mirror deployment examples -------------------------------------------------------
def _rendered(path):
    """(docs, config dict) of a rendered manifest file: its one ConfigMap with config.toml."""
    import tomllib

    import yaml

    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    cms = [d for d in docs if d.get("kind") == "ConfigMap" and "config.toml" in (d.get("data") or {})]
    if len(cms) != 1:
        raise SystemExit(f"FAIL {path}: expected one ConfigMap with config.toml, found {len(cms)}")
    return docs, tomllib.loads(cms[0]["data"]["config.toml"])


def _one(docs, kind, path):
    found = [d for d in docs if d.get("kind") == kind]
    if len(found) != 1:
        raise SystemExit(f"FAIL {path}: expected one {kind}, found {len(found)}")
    return found[0]


def _subset(want, have):
    return bool(want) and all(have.get(k) == v for k, v in want.items())


def _port_matches(rule_port, names, numbers):
    p = rule_port.get("port")
    return p is None or p in names or p in numbers


def _peer_admits(peer, labels, ns, own_ns):
    """Whether a NetworkPolicyPeer (without ipBlock) admits a pod with labels in namespace ns."""
    if "ipBlock" in peer:
        return False
    pod_sel = peer.get("podSelector")
    if pod_sel is not None and not all(labels.get(k) == v for k, v in (pod_sel.get("matchLabels") or {}).items()):
        return False
    if "namespaceSelector" not in peer:
        return ns == own_ns
    ns_labels = (peer["namespaceSelector"] or {}).get("matchLabels") or {}
    return all(k == "kubernetes.io/metadata.name" and v == ns for k, v in ns_labels.items())


def _to_toml(cfg):
    """check_manifests.py's TOML writer (the one its config check starts the binary with)."""
    sys.dont_write_bytecode = True  # no __pycache__ in the checkout
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from check_manifests import to_toml

    return to_toml(cfg)


def mirror_static_checks(mirror_path, sidecar_path):
    """The sidecar render points at the mirror render, and the policies let exactly it through.
    Returns (mirror config, sidecar config, {provider: mirror URL as rendered})."""
    mdocs, mcfg = _rendered(mirror_path)
    sdocs, scfg = _rendered(sidecar_path)
    problems = []
    mdep, sdep = _one(mdocs, "Deployment", mirror_path), _one(sdocs, "Deployment", sidecar_path)
    mns, sns = mdep["metadata"].get("namespace"), sdep["metadata"].get("namespace")
    if not mns or not sns:
        raise SystemExit("FAIL the renders must carry namespaces (helm template -n, kustomize namespace:)")
    mlabels = mdep["spec"]["template"]["metadata"].get("labels") or {}
    slabels = sdep["spec"]["template"]["metadata"].get("labels") or {}
    mcont = next(c for c in mdep["spec"]["template"]["spec"]["containers"] if c["name"] == "jwks-sidecar")
    admin_port = next(p["containerPort"] for p in mcont["ports"] if p["name"] == "admin")
    if mcfg.get("admin", {}).get("listen") != f"0.0.0.0:{admin_port}":
        problems.append(f"mirror: [admin] listen is {mcfg.get('admin', {}).get('listen')!r}, not 0.0.0.0:{admin_port} (the Service could not reach it)")
    # the Service port that reaches the admin listener
    svc_hosts = set()
    for svc in (d for d in mdocs if d.get("kind") == "Service"):
        if not _subset(svc["spec"].get("selector") or {}, mlabels):
            continue
        for sp in svc["spec"].get("ports", []):
            if sp.get("targetPort") in ("admin", admin_port):
                name = svc["metadata"]["name"]
                for suffix in ("svc", "svc.cluster.local"):
                    svc_hosts.add(f"{name}.{mns}.{suffix}:{sp['port']}")
    if not svc_hosts:
        raise SystemExit(f"FAIL {mirror_path}: no Service selects the mirror pods with a port to the admin listener")
    mnames = {p["name"] for p in mcfg.get("providers", [])}
    urls = {}
    for p in scfg.get("providers", []):
        u = urllib.parse.urlsplit(p.get("jwks_uri", ""))
        where = f"sidecar provider {p['name']}"
        if u.scheme != "http" or u.netloc not in svc_hosts or u.path != f"/jwks/{p['name']}":
            problems.append(f"{where}: jwks_uri {p.get('jwks_uri')!r} is not http://<{' or '.join(sorted(svc_hosts))}>/jwks/{p['name']}")
        if p["name"] not in mnames:
            problems.append(f"{where}: the mirror has no provider of that name (it has {sorted(mnames)})")
        if p.get("allow_insecure_http") is not True:
            problems.append(f"{where}: allow_insecure_http = true is needed for plain http to the mirror Service")
        if any(k in p for k in ("discovery", "discovery_url", "jwks_file", "jwks")):
            problems.append(f"{where}: a second key source besides the mirror")
        urls[p["name"]] = p.get("jwks_uri")
    # the mirror's ingress policy on the admin port: the sidecar pods, and no open rule
    admin_names, admin_numbers = {"admin"}, {admin_port}
    admitted = False
    policies = [d for d in mdocs if d.get("kind") == "NetworkPolicy"
                and _subset((d["spec"].get("podSelector") or {}).get("matchLabels") or {}, mlabels)]
    if not any("Ingress" in d["spec"].get("policyTypes", ["Ingress"]) for d in policies):
        problems.append("mirror: no NetworkPolicy restricts ingress to the mirror pods")
    for np in policies:
        for rule in np["spec"].get("ingress", []):
            ports = rule.get("ports") or [{}]
            if not any(_port_matches(rp, admin_names, admin_numbers) for rp in ports):
                continue
            peers = rule.get("from")
            if not peers:
                problems.append(f"mirror NetworkPolicy {np['metadata']['name']}: a rule admits anyone to the admin port")
                admitted = True
                continue
            if any(_peer_admits(peer, slabels, sns, mns) for peer in peers):
                admitted = True
            if any(_peer_admits(peer, {}, sns, mns) for peer in peers):
                problems.append(f"mirror NetworkPolicy {np['metadata']['name']}: pods without the client label reach the admin port")
    if policies and not admitted:
        problems.append(f"mirror NetworkPolicy: the sidecar pods (labels {slabels}, namespace {sns}) are not admitted to the admin port")
    # the sidecars' egress policy, when there is one, lets them reach the mirror pods
    for np in (d for d in sdocs if d.get("kind") == "NetworkPolicy"
               and _subset((d["spec"].get("podSelector") or {}).get("matchLabels") or {}, slabels)
               and "Egress" in d["spec"].get("policyTypes", [])):
        ok = any(
            any(_port_matches(rp, set(), {admin_port}) for rp in (rule.get("ports") or [{}]))
            and (not rule.get("to") or any(_peer_admits(peer, mlabels, mns, sns) for peer in rule["to"]))
            for rule in np["spec"].get("egress", []))
        if not ok:
            problems.append(f"sidecar NetworkPolicy {np['metadata']['name']}: egress to the mirror pods on {admin_port} not allowed")
    for p in problems:
        print(f"FAIL {p}")
    if problems:
        raise SystemExit(1)
    hosts = sorted({urllib.parse.urlsplit(u).netloc for u in urls.values()})
    log(f"static: {len(urls)} sidecar providers -> http://{', '.join(hosts)}/jwks/<name>, allow_insecure_http; "
        f"mirror admin port {admin_port} admits the sidecar pods ({sns}) and no unlabelled pod"
        + (", sidecar egress allows it" if any(d.get("kind") == "NetworkPolicy" for d in sdocs) else ""))
    return mcfg, scfg, urls


def _start(binary, cfg, path, log_path, env):
    open(path, "w").write(_to_toml(cfg))
    out = open(log_path, "w")
    p = subprocess.Popen([binary, "--config", path], stdout=out, stderr=subprocess.STDOUT, env=env)
    procs.append(p)
    return p


def _await_ready(p, admin, what, log_path, timeout=30):
    try:
        wait_for(lambda: p.poll() is not None or http_get(admin + "/readyz")[0] == 200, timeout, f"{what}'s /readyz")
    except SystemExit:
        raise SystemExit(f"FAIL {what} not ready within {timeout}s: /readyz {http_get(admin + '/readyz')[1][:200]!r}\n"
                         f"{open(log_path).read()[-2000:]}")
    if p.poll() is not None:
        raise SystemExit(f"FAIL {what} exited ({p.returncode}):\n{open(log_path).read()[-2000:]}")


def cmd_mirror(binary, mirror_path, sidecar_path, out_dir):
    mcfg, scfg, urls = mirror_static_checks(mirror_path, sidecar_path)
    work = tempfile.mkdtemp(prefix="jwks-mirror-e2e-")
    out_dir = out_dir or work
    tag = os.path.splitext(os.path.basename(mirror_path))[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("JWKS_SIDECAR_") and k != "RUST_LOG"}
    idp = Idp(binary=binary, log_path=os.path.join(out_dir, f"{tag}-idp.log"))
    idp.start()

    # The mirror: its rendered config, on loopback, with the fake IdP as every provider's source.
    mports = {k: free_port() for k in ("proxy", "admin")}
    mcfg["proxy"]["listen"] = f"127.0.0.1:{mports['proxy']}"
    mcfg["admin"]["listen"] = f"127.0.0.1:{mports['admin']}"
    mcfg.pop("authz", None)
    if "cache_dir" in mcfg.get("jwks", {}):
        mcfg["jwks"]["cache_dir"] = os.path.join(work, "mirror-cache")
    for p in mcfg["providers"]:
        for k in ("jwks_uri", "discovery", "discovery_url", "jwks_file", "jwks", "fetch_headers", "ca_file"):
            p.pop(k, None)
        p["jwks_uri"] = idp.jwks_uri
    madmin = f"http://127.0.0.1:{mports['admin']}"
    mlog = os.path.join(out_dir, f"{tag}-mirror.log")
    mp = _start(binary, mcfg, os.path.join(work, "mirror.toml"), mlog, env)
    _await_ready(mp, madmin, "the mirror", mlog)
    for name in urls:
        status, body = http_get(f"{madmin}/jwks/{name}")
        if status != 200 or idp.kid not in body.decode():
            raise SystemExit(f"FAIL the mirror's /jwks/{name}: {status} {body[:200]!r}")
    log(f"mirror ready on {madmin} (rendered config, {len(mcfg['providers'])} providers from the fake IdP); /jwks/<name> serves the IdP's keys")

    # The sidecar's rendered config is refused without allow_insecure_http (the mirror hop is
    # plain http to a non-loopback host).
    bad = json.loads(json.dumps(scfg))
    for p in bad["providers"]:
        p.pop("allow_insecure_http", None)
    bad["proxy"]["listen"] = f"127.0.0.1:{free_port()}"
    bad["admin"]["listen"] = f"127.0.0.1:{free_port()}"
    blog = os.path.join(out_dir, f"{tag}-sidecar-insecure.log")
    bp = _start(binary, bad, os.path.join(work, "sidecar-insecure.toml"), blog, env)
    try:
        bp.wait(30)
    except subprocess.TimeoutExpired:
        raise SystemExit("FAIL the sidecar config without allow_insecure_http was accepted (still running after 30s)")
    text = open(blog).read()
    if bp.returncode == 0 or "allow_insecure_http" not in text:
        raise SystemExit(f"FAIL without allow_insecure_http the binary should refuse the mirror URL naming the key; exit {bp.returncode}:\n{text[-1000:]}")
    line = next(l for l in text.splitlines() if "allow_insecure_http" in l)
    log("without allow_insecure_http the binary refuses the sidecar config: " + line[line.find("providers"):].strip()[:220])

    # The sidecar: its rendered config, the mirror Service's host:port replaced by the mirror's
    # loopback admin address (the path, /jwks/<name>, as rendered), the app by an echo server.
    sports = {k: free_port() for k in ("proxy", "admin", "echo")}
    echo = serve(echo_handler(), sports["echo"])
    scfg["proxy"]["listen"] = f"127.0.0.1:{sports['proxy']}"
    scfg["proxy"]["upstream"] = f"http://127.0.0.1:{sports['echo']}"
    scfg["admin"]["listen"] = f"127.0.0.1:{sports['admin']}"
    want = {}
    for p in scfg["providers"]:
        u = urllib.parse.urlsplit(p["jwks_uri"])
        p["jwks_uri"] = want[p["name"]] = urllib.parse.urlunsplit(u._replace(netloc=f"127.0.0.1:{mports['admin']}"))
    sadmin = f"http://127.0.0.1:{sports['admin']}"
    slog = os.path.join(out_dir, f"{tag}-sidecar.log")
    sp = _start(binary, scfg, os.path.join(work, "sidecar.toml"), slog, env)
    _await_ready(sp, sadmin, "the sidecar", slog)
    got = {p["name"]: (p.get("status") or {}).get("jwks_uri") for p in json.loads(http_get(sadmin + "/providers")[1])["providers"]}
    if got != want:
        raise SystemExit(f"FAIL the sidecar's /providers jwks_uri: {got}, want the mirror's {want}")
    log(f"sidecar ready on {sadmin}; /providers jwks_uri = the mirror ({', '.join(f'{n}: {urls[n]}' for n in sorted(urls))} as rendered)")

    # A token from the fake IdP for the first provider, with what its config requires.
    p0 = scfg["providers"][0]
    claims = {"iss": p0["issuer"], "aud": p0["audiences"][0], "sub": "mirror-e2e"}
    if p0.get("required_scopes"):
        claims["scope"] = " ".join(p0["required_scopes"])
    token = idp.token(**claims)
    status, body = http_get(f"http://127.0.0.1:{sports['proxy']}/orders", headers={"Authorization": f"Bearer {token}"})
    if status != 200:
        raise SystemExit(f"FAIL a token of provider {p0['name']} through the sidecar (keys via the mirror): {status} {body[:300]!r}\n{open(slog).read()[-1500:]}")
    log(f"a token of provider {p0['name']} (kid {idp.kid}) passes the sidecar: keys went IdP -> mirror -> sidecar")
    status, _ = http_get(f"http://127.0.0.1:{mports['proxy']}/orders", headers={"Authorization": f"Bearer {token}"})
    if status not in (401, 403):
        raise SystemExit(f"FAIL the mirror's own proxy listener answered {status} to a valid token (it must refuse everything)")
    log(f"the mirror's proxy listener refuses the same token ({status}): it is no gateway")
    stop_server(echo)
    if out_dir != work:
        shutil.rmtree(work, ignore_errors=True)
    log("mirror e2e: all checks passed")


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "healthcheck":
        cmd_healthcheck(sys.argv[2])
    elif len(sys.argv) == 4 and sys.argv[1] == "rules-coverage":
        cmd_rules_coverage(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 5 and sys.argv[1] == "mirror":
        out = None
        if "--out" in sys.argv:
            out = sys.argv[sys.argv.index("--out") + 1]
        cmd_mirror(sys.argv[2], sys.argv[3], sys.argv[4], out)
    elif len(sys.argv) >= 3 and sys.argv[1] == "run":
        out = None
        if "--out" in sys.argv:
            out = sys.argv[sys.argv.index("--out") + 1]
        cmd_run(sys.argv[2], out)
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(1)))
    try:
        sys.exit(main())
    finally:
        stop_all()
