#!/usr/bin/env python3
"""Checks of the built image (localhost/jwks-sidecar:dev), run with podman the way Kubernetes
runs it. Driven by deploy/image/test.sh, which installs the tools and writes the podman
settings (CONTAINERS_CONF); every container runs with --network host on free ports and talks to
a fake IdP and an echo app on 127.0.0.1.

  test.py quick    the image answers --version and, started with a config, a real request
                   (the CI part, scripts/test.d/55-image.sh)
  test.py full     everything below; prints the measured numbers and writes them as JSON to
                   $JWKS_IMAGE_WORK/results.json

full:
  image     size (uncompressed) and what is in it, user 65532, no shell, --version
  run       the config `helm template` renders (standalone example + test values: fake IdP,
            free ports, cache on) mounted read-only at /etc/jwks-sidecar like the ConfigMap,
            with the chart's securityContext as podman flags (read-only root, UID 65532, all
            capabilities dropped, no-new-privileges), /tmp and cache_dir on volumes:
            startup time to /readyz 200, idle RSS, requests (valid token 200 + claim header,
            no token 401, spoofed identity headers stripped), /metrics, the key cache written
            on the volume, `healthcheck` through podman exec (no shell), SIGTERM during an
            in-flight request (it completes, exit 0)
  healthcheck  the image's own HEALTHCHECK (exec form, no shell) through `podman healthcheck run`
  kube      `podman kube play --network host` of the rendered chart: standalone example, and
            sidecar example with a tiny local app image (deploy/image/echo); the same requests
            through the pod, /metrics scraped, then the pod stopped (SIGTERM, exit 0). What
            podman 4.3 cannot express is adapted in the YAML and printed (see KUBE_ADAPTATIONS).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.dont_write_bytecode = True  # no __pycache__ beside the imported e2e.py
sys.path.insert(0, os.path.join(ROOT, "deploy", "tests"))
from e2e import Idp, free_port, http_get  # noqa: E402  (the deployment suite's handle on `jwks-sidecar idp`, on 127.0.0.1)

IMAGE = os.environ.get("JWKS_IMAGE", "localhost/jwks-sidecar:dev")
ECHO_IMAGE = os.environ.get("JWKS_ECHO_IMAGE", "localhost/jwks-echo:dev")
WORK = os.environ.get("JWKS_IMAGE_WORK", "/var/tmp/jwks-sidecar-image")
CHART = os.path.join(ROOT, "helm", "jwks-sidecar")
TAG = f"jwks-img-{os.getpid()}"
ISSUER = "https://idp.test/"

results = {}
passed, failed = [], []
cleanup = []


def log(msg):
    print(f"   {msg}", flush=True)


def check(name, ok, detail=""):
    (passed if ok else failed).append(name)
    print(f"--- {'ok' if ok else 'FAILED'}: {name}{(' (' + detail + ')') if detail else ''}", flush=True)
    return ok


def sh(*cmd, check_rc=True, timeout=300, **kw):
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, **kw)
    if check_rc and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r


def podman(*args, **kw):
    return sh("podman", *args, **kw)


def http(url, headers=None, timeout=5):
    status, body = http_get(url, headers, timeout)
    return status, body.decode(errors="replace")


def wait_for(pred, timeout, what, interval=0.02):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except (OSError, ValueError) as e:
            last = e
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what} ({last})")


def ready(admin):
    try:
        return http(f"http://127.0.0.1:{admin}/readyz", timeout=1)[0] == 200
    except OSError:
        return False


def running(name):
    return podman("inspect", "-f", "{{.State.Running}}", name, check_rc=False).stdout.strip() == "true"


# --- the fakes on loopback ---------------------------------------------------------------------
class Echo:
    """An app on 127.0.0.1 that answers with the headers it got; /slow takes 3 s."""

    def __init__(self):
        self.port = free_port()
        self.slow_started = threading.Event()
        echo = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802
                if self.path.startswith("/slow"):
                    echo.slow_started.set()
                    time.sleep(3)
                body = json.dumps({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", self.port), H)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()


def start_idp():
    idp = Idp(free_port())
    idp.start()
    return idp


def provider_values(idp):
    return [{
        "name": "fake",
        "issuer": ISSUER,
        "jwks_uri": f"http://127.0.0.1:{idp.port}/jwks.json",
        "audiences": ["api"],
        "algorithms": ["RS256"],
        "claim_headers": {"sub": "x-jwt-sub", "tenant": "x-jwt-tenant"},
    }]


# --- helm ------------------------------------------------------------------------------------------
def helm_template(release, namespace, example, values):
    import yaml

    vf = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, dir=WORK)
    yaml.safe_dump(values, vf)
    vf.close()
    cleanup.append(lambda: os.unlink(vf.name))
    out = sh("helm", "template", release, CHART, "-n", namespace,
             "-f", os.path.join(ROOT, "helm", "examples", example), "-f", vf.name).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_values(idp, ports, **extra):
    v = {
        "image": {"repository": IMAGE.rsplit(":", 1)[0], "tag": IMAGE.rsplit(":", 1)[1], "pullPolicy": "Never"},
        "ports": {"proxy": ports["proxy"], "admin": ports["admin"], "authzHttp": ports["authz"], "authzGrpc": ports["grpc"]},
        "providers": provider_values(idp),
        "cache": {"enabled": True},
        "proxy": {"shutdownGrace": "10s"},
    }
    v.update(extra)
    return v


def rendered_config(docs):
    return next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.toml"]


# --- requests through a running sidecar ------------------------------------------------------------
def request_checks(where, idp, proxy, admin):
    tok = idp.token(iss=ISSUER, aud="api", sub="alice", tenant="acme")
    st, body = http(f"http://127.0.0.1:{proxy}/orders", {"Authorization": f"Bearer {tok}"})
    seen = json.loads(body) if st == 200 else {}
    check(f"{where}: valid token -> 200 with claim headers (x-jwt-sub: alice, x-jwt-tenant: acme)",
          st == 200 and seen.get("x-jwt-sub") == "alice" and seen.get("x-jwt-tenant") == "acme",
          f"status {st}, app saw x-jwt-sub={seen.get('x-jwt-sub')!r} x-jwt-tenant={seen.get('x-jwt-tenant')!r}")
    st, _ = http(f"http://127.0.0.1:{proxy}/orders")
    check(f"{where}: no token -> 401", st == 401, f"status {st}")
    st, body = http(f"http://127.0.0.1:{proxy}/orders", {
        "Authorization": f"Bearer {tok}", "X-JWT-Sub": "mallory", "x-jwt-admin": "true", "X_JWT_Role": "root"})
    seen = json.loads(body) if st == 200 else {}
    spoofed = {k: v for k, v in seen.items() if re.match(r"x[-_]jwt[-_]", k) and k not in ("x-jwt-sub", "x-jwt-tenant")}
    check(f"{where}: spoofed identity headers stripped (x-jwt-sub replaced, x-jwt-admin and x_jwt_role dropped)",
          st == 200 and seen.get("x-jwt-sub") == "alice" and not spoofed,
          f"status {st}, x-jwt-sub={seen.get('x-jwt-sub')!r}, leftover {spoofed}")
    st, _ = http(f"http://127.0.0.1:{proxy}/orders", {"Authorization": f"Bearer {tok[:-4]}AAAA"})
    check(f"{where}: tampered signature -> 401", st == 401, f"status {st}")
    st, metrics = http(f"http://127.0.0.1:{admin}/metrics")
    names = sorted({m.group(1) for m in re.finditer(r"(?m)^(jwks_sidecar_\w+?)(?:_bucket|_sum|_count)?[{ ]", metrics)})
    check(f"{where}: /metrics scraped (admin port)", st == 200 and len(names) >= 5 and "jwks_sidecar_" in metrics,
          f"status {st}, {len(names)} jwks_sidecar_* series names")
    for path in ("/healthz", "/readyz"):
        st, _ = http(f"http://127.0.0.1:{admin}{path}")
        check(f"{where}: probe {path} on the admin port -> 200", st == 200, f"status {st}")


def proc_status(pid):
    out = {}
    for line in open(f"/proc/{pid}/status"):
        k, _, v = line.partition(":")
        out[k] = v.strip()
    return out


def root_mount_ro(pid):
    for line in open(f"/proc/{pid}/mountinfo"):
        f = line.split()
        if f[4] == "/":
            return "ro" in f[5].split(",")
    return False


def started_at(cid):
    s = podman("inspect", "--format", "{{.State.StartedAt}}", cid).stdout.strip()
    # "2026-11-28 08:01:02.123456789 +0000 UTC"
    m = re.match(r"(\d+-\d+-\d+ \d+:\d+:\d+)(?:\.(\d+))? ([+-]\d{4})", s)
    frac = float("0." + m.group(2)) if m.group(2) else 0.0
    return datetime.strptime(f"{m.group(1)} {m.group(3)}", "%Y-%m-%d %H:%M:%S %z").timestamp() + frac


def rm_container(name):
    podman("rm", "-f", "-t", "0", name, check_rc=False)


# --- image ----------------------------------------------------------------------------------------
def test_image():
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    size = int(info["Size"])
    results["image_size_bytes"] = size
    results["image_size_mib"] = round(size / 1048576, 2)
    check("image: under 20 MiB uncompressed", size < 20 * 1048576, f"{size} bytes = {size / 1048576:.2f} MiB")
    cfg = info["Config"]
    results["image_user"] = cfg.get("User")
    check("image: USER 65532:65532", cfg.get("User") == "65532:65532", f"User={cfg.get('User')!r}")
    check("image: entrypoint /usr/local/bin/jwks-sidecar, no config baked in",
          cfg.get("Entrypoint") == ["/usr/local/bin/jwks-sidecar"], f"{cfg.get('Entrypoint')}")
    hc = info.get("Healthcheck") or info.get("HealthCheck") or cfg.get("Healthcheck") or {}
    check("image: HEALTHCHECK in exec form (no shell): jwks-sidecar healthcheck",
          (hc.get("Test") or [""])[0] == "CMD" and "healthcheck" in hc.get("Test", []), f"{hc.get('Test')}")

    # What is in it: the exported filesystem, by part.
    cid = podman("create", "--name", f"{TAG}-export", IMAGE).stdout.strip()
    cleanup.append(lambda: rm_container(f"{TAG}-export"))
    listing = subprocess.run(f"podman export {cid} | tar -tvf -", shell=True, capture_output=True, text=True, check=True).stdout
    rm_container(cid)
    parts = {"/usr/local/bin/jwks-sidecar": 0, "/usr/share/zoneinfo (tzdata)": 0, "/etc/ssl/certs (CA bundle)": 0,
             "/usr/share/doc (licenses, config.example.toml)": 0, "other (/etc passwd/group/os-release/services, dpkg status)": 0}
    files, names = 0, []
    for line in listing.splitlines():
        f = line.split(None, 5)
        if len(f) < 6 or not line.startswith("-"):
            if len(f) >= 6:
                names.append(f[5].split(" -> ")[0])
            continue
        sz, path = int(f[2]), "/" + f[5].lstrip("./")
        files += 1
        names.append(path)
        key = ("/usr/local/bin/jwks-sidecar" if path == "/usr/local/bin/jwks-sidecar" else
               "/usr/share/zoneinfo (tzdata)" if path.startswith("/usr/share/zoneinfo") else
               "/etc/ssl/certs (CA bundle)" if path.startswith("/etc/ssl") else
               "/usr/share/doc (licenses, config.example.toml)" if path.startswith("/usr/share/doc") else
               "other (/etc passwd/group/os-release/services, dpkg status)")
        parts[key] += sz
    results["image_contents"] = {k: v for k, v in parts.items()}
    results["image_files"] = files
    for k, v in parts.items():
        log(f"{v / 1048576:7.2f} MiB  {k}")
    shells = [n for n in names if re.search(r"(^|/)(sh|bash|dash|ash|busybox|apt|apt-get|dpkg)$", n)]
    check("image: no shell, no busybox, no package manager in the filesystem", not shells, f"{files} files; found {shells}")
    r = podman("run", "--rm", "--entrypoint", "/bin/sh", IMAGE, "-c", "true", check_rc=False)
    check("image: /bin/sh cannot be run", r.returncode != 0, f"exit {r.returncode}: {r.stderr.strip()[-120:]}")
    r = podman("run", "--rm", IMAGE, "--version", check_rc=False)
    results["version"] = r.stdout.strip()
    check("image: --version", r.returncode == 0 and r.stdout.startswith("jwks-sidecar "), r.stdout.strip())


# --- podman run, like the kubelet ---------------------------------------------------------------
def run_like_kubernetes(name, cfg_dir, cache_dir, extra=()):
    # The chart's securityContext and volumes as podman flags.
    return [
        "run", "-d", "--name", name, "--network", "host",
        "--user", "65532:65532", "--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-v", f"{cfg_dir}:/etc/jwks-sidecar:ro",                 # configMap volume, readOnly
        "--tmpfs", "/tmp:rw,size=8m,mode=1777",                  # emptyDir, sizeLimit 8Mi
        "-v", f"{cache_dir}:/var/cache/jwks-sidecar:rw",          # emptyDir for cache_dir
        *extra, IMAGE, "--config", "/etc/jwks-sidecar/config.toml",
    ]


def test_run(quick=False):
    idp, echo = start_idp(), Echo()
    ports = {k: free_port() for k in ("proxy", "admin", "authz", "grpc")}
    docs = helm_template("jwt-authz", "auth", "standalone.yaml",
                         test_values(idp, ports, proxy={"upstream": f"http://127.0.0.1:{echo.port}", "shutdownGrace": "10s"}))
    cfg = rendered_config(docs)
    work = tempfile.mkdtemp(prefix="run-", dir=WORK)
    cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
    os.makedirs(f"{work}/config")
    os.makedirs(f"{work}/cache")
    open(f"{work}/config/config.toml", "w").write(cfg)
    os.chmod(f"{work}/config", 0o755)
    os.chown(f"{work}/cache", 65532, 65532)   # fsGroup: 65532 on the emptyDir
    if not quick:
        log("rendered config (standalone example + test values), mounted at /etc/jwks-sidecar/config.toml:")
        for line in cfg.splitlines():
            log("  | " + line)
    if not quick:
        # Startup time, sampled: start, wait for /readyz 200, remove; the median is reported.
        samples = []
        for i in range(5):
            for f in os.listdir(f"{work}/cache"):
                os.unlink(f"{work}/cache/{f}")   # cold: keys come from the IdP, not the cache
            n = f"{TAG}-start{i}"
            cleanup.append(lambda n=n: rm_container(n))
            t0 = time.time()
            podman(*run_like_kubernetes(n, f"{work}/config", f"{work}/cache", ("--no-healthcheck",)))
            wait_for(lambda: ready(ports["admin"]), 60, "/readyz 200")
            t1 = time.time()
            samples.append((t1 - t0, t1 - started_at(n)))
            rm_container(n)
            wait_for(lambda: not ready(ports["admin"]), 30, "the sample container to be gone", interval=0.1)
        samples.sort()
        results["startup_samples_podman_run_to_ready_s"] = [round(a, 3) for a, _ in samples]
        results["startup_samples_process_to_ready_s"] = sorted(round(b, 3) for _, b in samples)
        results["startup_median_podman_run_to_ready_s"] = round(samples[2][0], 3)
        results["startup_median_process_to_ready_s"] = results["startup_samples_process_to_ready_s"][2]
        check("run: startup time to /readyz 200 (keys fetched from the IdP), 5 cold starts", True,
              f"median {samples[2][0]:.3f}s from `podman run`, {results['startup_median_process_to_ready_s']:.3f}s "
              f"from container start; samples {results['startup_samples_process_to_ready_s']}")
        for f in os.listdir(f"{work}/cache"):
            os.unlink(f"{work}/cache/{f}")   # the main run starts with an empty key cache again
    name = f"{TAG}-run"
    cleanup.append(lambda: rm_container(name))
    t0 = time.time()
    podman(*run_like_kubernetes(name, f"{work}/config", f"{work}/cache"))
    t_cmd = time.time()
    polls = [0]

    def up():
        polls[0] += 1
        if ready(ports["admin"]):
            return True
        if polls[0] % 25 == 0 and not running(name):
            raise RuntimeError("the container exited:\n" + podman("logs", name, check_rc=False).stderr[-3000:])
        return False

    try:
        wait_for(up, 60, "/readyz 200")
        t_ready = time.time()
    except Exception:
        print(podman("logs", name, check_rc=False).stderr[-3000:])
        raise
    start = started_at(name)
    results["startup_podman_run_to_ready_s"] = round(t_ready - t0, 3)
    results["startup_process_to_ready_s"] = round(t_ready - start, 3)
    check("run: /readyz 200 after start (keys fetched from the IdP)", True,
          f"podman run -> ready {t_ready - t0:.3f}s (podman run itself {t_cmd - t0:.3f}s); container start -> ready {t_ready - start:.3f}s")

    if quick:
        tok = idp.token(iss=ISSUER, aud="api", sub="alice", tenant="acme")
        st, body = http(f"http://127.0.0.1:{ports['proxy']}/orders", {"Authorization": f"Bearer {tok}"})
        check("quick: a request with a valid token through the container -> 200 with x-jwt-sub",
              st == 200 and json.loads(body).get("x-jwt-sub") == "alice", f"status {st}")
        st, _ = http(f"http://127.0.0.1:{ports['proxy']}/orders")
        check("quick: no token -> 401", st == 401, f"status {st}")
        return

    pid = int(podman("inspect", "-f", "{{.State.Pid}}", name).stdout)
    status = proc_status(pid)
    results["rss_at_ready_kib"] = int(status["VmRSS"].split()[0])
    uids = status["Uid"].split()
    check("run: process runs as UID 65532 (real, effective, saved, fs), GID 65532",
          set(uids) == {"65532"} and set(status["Gid"].split()) == {"65532"}, f"Uid {uids}, Gid {status['Gid'].split()}")
    check("run: no capabilities, no-new-privileges",
          status["CapEff"] == "0000000000000000" and status["CapBnd"] == "0000000000000000" and status.get("NoNewPrivs") == "1",
          f"CapEff {status['CapEff']}, CapBnd {status['CapBnd']}, NoNewPrivs {status.get('NoNewPrivs')}")
    check("run: root filesystem mounted read-only", root_mount_ro(pid))

    request_checks("run", idp, ports["proxy"], ports["admin"])
    cached = [f for f in os.listdir(f"{work}/cache")]
    check("run: cache_dir written on the mounted volume (read-only root elsewhere)", bool(cached), f"{cached}")

    # Idle RSS: after the requests, nothing sent for 5 s.
    time.sleep(5)
    status = proc_status(pid)
    rss_kib = int(status["VmRSS"].split()[0])
    results["idle_rss_kib"] = rss_kib
    results["idle_rss_mib"] = round(rss_kib / 1024, 1)
    results["peak_rss_kib"] = int(status["VmHWM"].split()[0])
    results["threads"] = int(status["Threads"])
    check("run: idle RSS measured (VmRSS of the container's process)", rss_kib > 0,
          f"{rss_kib / 1024:.1f} MiB idle, peak {results['peak_rss_kib'] / 1024:.1f} MiB, {status['Threads']} threads")

    # healthcheck subcommand, exec form: no shell involved.
    r = podman("exec", name, "/usr/local/bin/jwks-sidecar", "healthcheck", "--url", f"http://127.0.0.1:{ports['admin']}/readyz", check_rc=False)
    check("run: `jwks-sidecar healthcheck` via podman exec (no shell) -> exit 0", r.returncode == 0, f"exit {r.returncode}")
    r = podman("exec", name, "/usr/local/bin/jwks-sidecar", "healthcheck", "--url", f"http://127.0.0.1:{free_port()}/readyz", check_rc=False)
    check("run: healthcheck against a closed port -> non-zero", r.returncode != 0, f"exit {r.returncode}")
    r = podman("exec", name, "/bin/sh", "-c", "true", check_rc=False)
    check("run: podman exec /bin/sh fails (no shell in the image)", r.returncode != 0, f"exit {r.returncode}")

    # SIGTERM with a request in flight: it completes, then the process exits 0.
    tok = idp.token(iss=ISSUER, aud="api", sub="alice")
    res = {}

    def slow():
        try:
            res["r"] = http(f"http://127.0.0.1:{ports['proxy']}/slow", {"Authorization": f"Bearer {tok}"}, timeout=30)
        except Exception as e:  # noqa: BLE001
            res["r"] = (None, repr(e))

    th = threading.Thread(target=slow)
    th.start()
    echo.slow_started.wait(10)
    t_term = time.time()
    podman("kill", "--signal", "TERM", name)
    th.join(30)
    code = podman("wait", name, timeout=60).stdout.strip()
    t_exit = time.time()
    results["sigterm_to_exit_s"] = round(t_exit - t_term, 3)
    st = res.get("r", (None, ""))[0]
    check("run: SIGTERM during an in-flight request: the request completes with 200", st == 200, f"status {st}")
    check("run: after SIGTERM the container exits 0", code == "0", f"exit {code}, {t_exit - t_term:.2f}s after SIGTERM")
    logs = podman("logs", name, check_rc=False)
    log("container log (last lines):")
    for line in (logs.stdout + logs.stderr).strip().splitlines()[-4:]:
        log("  | " + line[:200])


def test_image_healthcheck():
    """The image's HEALTHCHECK as declared (exec form, default admin 127.0.0.1:9901), run by podman,
    in a private network namespace (inline keys: no IdP needed)."""
    work = tempfile.mkdtemp(prefix="hc-", dir=WORK)
    cleanup.append(lambda: shutil.rmtree(work, ignore_errors=True))
    os.makedirs(f"{work}/config")
    open(f"{work}/config/config.toml", "w").write(
        '[proxy]\nlisten = "0.0.0.0:8080"\nupstream = "http://127.0.0.1:9"\n'
        '[admin]\nlisten = "127.0.0.1:9901"\n'
        '[[providers]]\nname = "inline"\nissuer = "https://inline.example/"\naudiences = ["a"]\n'
        'jwks = { keys = [{ kty = "OKP", crv = "Ed25519", kid = "k1", x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }] }\n')
    name = f"{TAG}-hc"
    cleanup.append(lambda: rm_container(name))
    podman("run", "-d", "--name", name, "--network", "none", "--read-only",
           "-v", f"{work}/config:/etc/jwks-sidecar:ro", IMAGE)
    ok = False
    for _ in range(50):
        r = podman("healthcheck", "run", name, check_rc=False)
        if r.returncode == 0:
            ok = True
            break
        time.sleep(0.2)
    check("healthcheck: the image's HEALTHCHECK (exec form, no shell) -> healthy via `podman healthcheck run`",
          ok, (r.stdout + r.stderr).strip()[-200:])
    podman("stop", "-t", "15", name, check_rc=False)
    code = podman("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    check("healthcheck: podman stop (SIGTERM) -> exit 0", code == "0", f"exit {code}")


# --- podman kube play ---------------------------------------------------------------------------
KUBE_ADAPTATIONS = []


def adapt_for_podman(docs):
    """Changes the rendered YAML needs before podman 4.3's `kube play --network host` takes it.
    Each one is recorded (printed, and in results.json)."""
    out = []
    for d in docs:
        if d["kind"] not in ("Deployment", "ConfigMap"):
            note(f"{d['kind']} {d['metadata']['name']}: not played (podman kube play ignores this kind)")
            continue
        if d["kind"] == "Deployment":
            spec = d["spec"]["template"]["spec"]
            inits = spec.get("initContainers") or []
            native = [c for c in inits if c.get("restartPolicy") == "Always"]
            if native:
                spec["initContainers"] = [c for c in inits if c.get("restartPolicy") != "Always"] or None
                if spec["initContainers"] is None:
                    del spec["initContainers"]
                for c in native:
                    del c["restartPolicy"]
                spec["containers"] = native + spec["containers"]
                note("native sidecar (initContainers[] with restartPolicy: Always) moved to containers[0]: podman runs "
                     "init containers to completion first, and refuses one with probes or lifecycle "
                     "(\"cannot create an init container that has either of lifecycle, livenessProbe, readinessProbe, or startupProbe set\")")
            for c in spec["containers"]:
                if c.pop("ports", None):
                    note(f"container {c['name']}: ports[] removed: podman 4.3 turns containerPorts into host port mappings, "
                         "refused with --network host (\"PortMappings can only be used with Bridge or slirp4netns networking\")")
        out.append(d)
    return out


def note(msg):
    if msg not in KUBE_ADAPTATIONS:
        KUBE_ADAPTATIONS.append(msg)
        log("podman: " + msg)


def kube_play(label, docs, admin, proxy, idp, app_name=None):
    import yaml

    docs = adapt_for_podman(docs)
    path = os.path.join(WORK, f"kube-{label}.yaml")
    yaml.safe_dump_all(docs, open(path, "w"))
    dep = next(d for d in docs if d["kind"] == "Deployment")
    pod = f"{dep['metadata']['name']}-pod-0"
    vols = [v["name"] for v in dep["spec"]["template"]["spec"].get("volumes", [])]
    cm = [d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"]

    def down():
        podman("kube", "down", path, check_rc=False)
        podman("pod", "rm", "-f", "-t", "0", pod, check_rc=False)
        for v in vols + cm:   # emptyDir and configMap volumes outlive the pod in podman 4.3
            podman("volume", "rm", "-f", v, check_rc=False)

    down()
    cleanup.append(down)
    t0 = time.time()
    r = podman("kube", "play", "--network", "host", path, check_rc=False, timeout=120)
    if not check(f"kube {label}: podman kube play --network host starts the pod", r.returncode == 0,
                 (r.stdout + r.stderr).strip().splitlines()[-1][:300] if r.returncode else f"pod {pod}"):
        return
    try:
        wait_for(lambda: ready(admin), 60, f"{label} /readyz")
    except RuntimeError as e:
        check(f"kube {label}: /readyz 200", False, str(e))
        print(podman("pod", "logs", pod, check_rc=False).stdout[-3000:])
        return
    check(f"kube {label}: /readyz 200", True, f"kube play -> ready {time.time() - t0:.2f}s")
    side = f"{pod}-jwks-sidecar"
    ins = json.loads(podman("inspect", side).stdout)[0]
    pid = ins["State"]["Pid"]
    st = proc_status(pid)
    check(f"kube {label}: securityContext applied (UID 65532, read-only root, no capabilities, no-new-privileges)",
          set(st["Uid"].split()) == {"65532"} and root_mount_ro(pid) and st["CapEff"] == "0000000000000000"
          and st.get("NoNewPrivs") == "1",
          f"Uid {st['Uid'].split()[0]}, ro root {root_mount_ro(pid)}, CapEff {st['CapEff']}, NoNewPrivs {st.get('NoNewPrivs')}")
    mounts = {m["Destination"]: m for m in ins["Mounts"]}
    check(f"kube {label}: ConfigMap mounted read-only at /etc/jwks-sidecar, emptyDirs at /tmp and the cache dir",
          "/etc/jwks-sidecar" in mounts and not mounts["/etc/jwks-sidecar"]["RW"] and "/tmp" in mounts
          and "/var/cache/jwks-sidecar" in mounts, ", ".join(f"{k} ({m['Type']} {m['Name']})" for k, m in mounts.items()))
    hc = (ins["Config"].get("Healthcheck") or {}).get("Test")
    note(f"probes: podman 4.3 turns the livenessProbe (httpGet, port: admin) into the healthcheck {hc} "
         "(named port unresolved, and curl and /bin/sh do not exist in the image), ignores readinessProbe and "
         "startupProbe, and runs no healthcheck timer without systemd; this test polls the probe paths from outside, "
         "as the kubelet's httpGet does")
    pspec = dep["spec"]["template"]["spec"]
    cspec = next(c for c in pspec["containers"] if c["name"] == "jwks-sidecar")
    grace, stop_timeout = pspec.get("terminationGracePeriodSeconds"), ins["Config"].get("StopTimeout")
    if grace is not None and stop_timeout != grace:
        note(f"terminationGracePeriodSeconds {grace} not applied (podman stop timeout {stop_timeout}s)")
    if (cspec.get("lifecycle") or {}).get("preStop"):
        note("lifecycle.preStop (sleep) not run by podman on stop")
    mem_limit = ((cspec.get("resources") or {}).get("limits") or {}).get("memory")
    if mem_limit and not ins["HostConfig"].get("Memory"):
        note(f"resources.limits.memory {mem_limit} not applied (HostConfig.Memory 0)")
    fs_group = (pspec.get("securityContext") or {}).get("fsGroup")
    if fs_group is not None and str(fs_group) not in st.get("Groups", "").split():
        note(f"fsGroup {fs_group} not added to the process's groups (Groups: {st.get('Groups')!r})")
    log(f"applied by podman: memory limit {ins['HostConfig'].get('Memory')} bytes (limits.memory {mem_limit}), "
        f"groups {st.get('Groups')!r} (fsGroup {fs_group})")
    tmp_vol = next((v for v in pspec.get("volumes", []) if v["name"] == "tmp"), {})
    if (tmp_vol.get("emptyDir") or {}).get("sizeLimit") and mounts.get("/tmp", {}).get("Type") == "volume":
        note("emptyDir sizeLimit not applied (each emptyDir is a plain named volume, kept after the pod is removed)")
    request_checks(f"kube {label}", idp, proxy, admin)
    if app_name:
        app = json.loads(podman("inspect", f"{pod}-{app_name}").stdout)[0]
        check(f"kube {label}: app container {app_name} running beside the sidecar", app["State"]["Running"],
              f"image {app['ImageName']}")
    t = time.time()
    podman("pod", "stop", "-t", "30", pod, timeout=90)
    code = podman("inspect", "-f", "{{.State.ExitCode}}", side).stdout.strip()
    check(f"kube {label}: pod stop (SIGTERM) -> jwks-sidecar exits 0", code == "0", f"exit {code} after {time.time() - t:.2f}s")
    down()


def build_echo():
    if podman("image", "exists", ECHO_IMAGE, check_rc=False).returncode != 0:
        log(f"building {ECHO_IMAGE} (deploy/image/echo)")
        podman("build", "--pull=never", "--format", "docker", "-t", ECHO_IMAGE, "-f", "Containerfile", ".",
               cwd=os.path.join(HERE, "echo"), timeout=600)


def test_kube():
    idp, echo = start_idp(), Echo()
    # standalone: the proxy forwards to the echo app on the host's loopback
    ports = {k: free_port() for k in ("proxy", "admin", "authz", "grpc")}
    docs = helm_template("jwt-authz", "auth", "standalone.yaml",
                         test_values(idp, ports, proxy={"upstream": f"http://127.0.0.1:{echo.port}", "shutdownGrace": "10s"}))
    kube_play("standalone", docs, ports["admin"], ports["proxy"], idp)

    # sidecar: the app container of helm/examples/sidecar.yaml, on the tiny echo image
    build_echo()
    ports = {k: free_port() for k in ("proxy", "admin", "authz", "grpc", "app")}
    import yaml

    example = yaml.safe_load(open(os.path.join(ROOT, "helm", "examples", "sidecar.yaml")))
    app = example["app"]["container"]
    app["image"] = ECHO_IMAGE
    app["env"] = [{"name": "LISTEN_ADDR", "value": f"127.0.0.1:{ports['app']}"}]
    docs = helm_template("api", "shop", "sidecar.yaml",
                         test_values(idp, ports, replicaCount=1, app={"port": ports["app"], "container": app}))
    note("replicaCount set to 1 for the sidecar example: podman creates every replica as a pod, and on the host "
         "network they would bind the same ports")
    kube_play("sidecar", docs, ports["admin"], ports["proxy"], idp, app_name=app["name"])


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "full"
    os.makedirs(WORK, exist_ok=True)
    t = time.time()
    try:
        if mode == "quick":
            r = podman("run", "--rm", IMAGE, "--version", check_rc=False)
            check("quick: --version", r.returncode == 0 and r.stdout.startswith("jwks-sidecar "), r.stdout.strip())
            test_run(quick=True)
        elif mode == "full":
            for name, fn in (("image", test_image), ("run", test_run), ("healthcheck", test_image_healthcheck), ("kube", test_kube)):
                print(f"\n=== {name}", flush=True)
                try:
                    fn()
                except Exception as e:  # noqa: BLE001  (one part failing does not stop the others)
                    check(f"{name}: completed", False, f"{type(e).__name__}: {e}")
        else:
            raise SystemExit(f"usage: {sys.argv[0]} quick|full")
    finally:
        for f in reversed(cleanup):
            try:
                f()
            except Exception:  # noqa: BLE001
                pass
    results["kube_play_adaptations"] = KUBE_ADAPTATIONS
    results["duration_s"] = round(time.time() - t, 1)
    if mode == "full":
        json.dump(results, open(os.path.join(WORK, "results.json"), "w"), indent=2)
        print("\n=== numbers")
        for k in ("image_size_bytes", "image_size_mib", "image_user", "version", "startup_median_podman_run_to_ready_s",
                  "startup_median_process_to_ready_s", "startup_samples_process_to_ready_s", "rss_at_ready_kib",
                  "idle_rss_mib", "peak_rss_kib", "threads", "sigterm_to_exit_s"):
            print(f"   {k}: {results.get(k)}")
        print(f"   (all in {os.path.join(WORK, 'results.json')})")
    print(f"\nimage {mode}: {len(passed)} passed, {len(failed)} failed in {results['duration_s']}s")
    for f in failed:
        print(f"  FAILED: {f}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
