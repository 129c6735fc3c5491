#!/usr/bin/env python3
"""Checks rendered Kubernetes manifests (helm template / kubectl kustomize output).

  check_manifests.py validate [--sidecar|--standalone] [--helm] FILE...
      Every built-in object is validated against the Kubernetes OpenAPI schemas
      (kubernetes-validate, strict: unknown fields are errors) for each version in
      K8S_VERSIONS. Custom resources (ServiceMonitor, PodMonitor, PrometheusRule, Istio
      AuthorizationPolicy, Envoy Gateway SecurityPolicy) have no schema there: they get
      structural checks here (apiVersion, kind, required fields, PromQL through promtool).
      Workloads must carry the restricted security posture and the probes.
  check_manifests.py config BINARY FILE...
      Every ConfigMap key config.toml is started with the real binary (listeners moved to
      127.0.0.1 free ports) and must come up: /healthz answers 200 within a few seconds.
      Keys the binary of this checkout does not know yet but the chart can render on request
      (the [authz], [jwks] and [token_cache] sections, fetch_headers, ca_file) are removed and reported
      when, and only when, the binary rejects exactly them.

Exit status 0 when everything passed; one line per problem otherwise.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request

import yaml

K8S_VERSIONS = ["1.29.0", "1.33.0"]
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("security.istio.io/v1", "AuthorizationPolicy"),
    ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"),
}
PENDING_KEYS = {"authz", "jwks", "token_cache", "cache_dir", "fetch_headers", "ca_file"}

problems = []
notes = []


def fail(where, msg):
    problems.append(f"{where}: {msg}")


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def name_of(doc):
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


# --- custom resources ---------------------------------------------------------------------
def check_crd(where, doc):
    spec = doc.get("spec") or {}
    md = doc.get("metadata") or {}
    if not md.get("name"):
        fail(where, "metadata.name missing")
    allowed_top = {"apiVersion", "kind", "metadata", "spec"}
    if set(doc) - allowed_top:
        fail(where, f"unexpected top-level fields {sorted(set(doc) - allowed_top)}")
    kind = doc["kind"]
    if kind in ("ServiceMonitor", "PodMonitor"):
        if not (spec.get("selector") or {}).get("matchLabels"):
            fail(where, "spec.selector.matchLabels missing")
        eps = spec.get("endpoints" if kind == "ServiceMonitor" else "podMetricsEndpoints")
        if not eps:
            fail(where, "no endpoints")
        for ep in eps or []:
            if ep.get("port") != "admin" or ep.get("path") != "/metrics":
                fail(where, f"endpoint must scrape port admin path /metrics: {ep}")
            unknown = set(ep) - {"port", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"}
            if unknown:
                fail(where, f"unknown endpoint fields {sorted(unknown)}")
    elif kind == "PrometheusRule":
        groups = spec.get("groups")
        if not groups:
            fail(where, "spec.groups empty")
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump({"groups": groups}, f)
        r = subprocess.run(["promtool", "check", "rules", f.name], capture_output=True, text=True)
        os.unlink(f.name)
        if r.returncode != 0:
            fail(where, "promtool check rules: " + (r.stdout + r.stderr).strip())
        for g in groups or []:
            for rule in g.get("rules", []):
                if "alert" in rule and not (rule.get("annotations") or {}).get("runbook"):
                    fail(where, f"alert {rule['alert']} has no runbook annotation")
    elif kind == "AuthorizationPolicy":
        if spec.get("action") != "CUSTOM":
            fail(where, "action must be CUSTOM for ext_authz")
        if not (spec.get("provider") or {}).get("name"):
            fail(where, "CUSTOM needs spec.provider.name")
        if not (spec.get("selector") or spec.get("targetRefs")):
            fail(where, "needs spec.selector or spec.targetRefs")
        for rule in spec.get("rules", []):
            if set(rule) - {"from", "to", "when"}:
                fail(where, f"unknown rule fields {sorted(set(rule) - {'from', 'to', 'when'})}")
    elif kind == "SecurityPolicy":
        refs = spec.get("targetRefs") or ([spec["targetRef"]] if spec.get("targetRef") else [])
        if not refs:
            fail(where, "needs spec.targetRefs")
        for ref in refs:
            if not {"group", "kind", "name"} <= set(ref):
                fail(where, f"targetRef needs group, kind, name: {ref}")
        ext = spec.get("extAuth") or {}
        backends = (ext.get("grpc") or ext.get("http") or {}).get("backendRefs") or []
        if not backends:
            fail(where, "extAuth.grpc or extAuth.http needs backendRefs")
        for b in backends:
            if not (b.get("name") and isinstance(b.get("port"), int)):
                fail(where, f"backendRef needs name and port: {b}")


# --- security posture -------------------------------------------------------------------
def pod_spec_of(doc):
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
        return doc["spec"]["template"]
    return None


def check_workload(where, doc, mode, helm, needs_token=False):
    tmpl = pod_spec_of(doc)
    if tmpl is None:
        return
    spec = tmpl["spec"]
    psc = spec.get("securityContext") or {}
    if spec.get("automountServiceAccountToken") is not False and not needs_token:
        fail(where, "automountServiceAccountToken must be false (no provider here needs a token)")
    if needs_token and spec.get("automountServiceAccountToken") is not True:
        fail(where, "a provider reads the service-account token but automountServiceAccountToken is not true")
    if psc.get("runAsNonRoot") is not True:
        fail(where, "pod securityContext.runAsNonRoot must be true")
    if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail(where, "pod seccompProfile must be RuntimeDefault")
    inits = {c["name"]: c for c in spec.get("initContainers", [])}
    mains = {c["name"]: c for c in spec.get("containers", [])}
    if mode == "sidecar":
        c = inits.get("jwks-sidecar")
        if c is None or c.get("restartPolicy") != "Always":
            fail(where, "sidecar mode: jwks-sidecar must be an initContainer with restartPolicy: Always")
        if not mains:
            fail(where, "sidecar mode: the app container is missing")
    else:
        c = mains.get("jwks-sidecar")
        if c is None:
            fail(where, "standalone mode: no jwks-sidecar container")
    if c is None:
        return
    sc = c.get("securityContext") or {}
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(where, "jwks-sidecar: readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(where, "jwks-sidecar: allowPrivilegeEscalation must be false")
    if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
        fail(where, "jwks-sidecar: capabilities.drop must be [ALL]")
    if sc.get("runAsNonRoot") is False:
        fail(where, "jwks-sidecar: runAsNonRoot must not be false")
    for probe, path in (("startupProbe", None), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        p = c.get(probe)
        if not p or (p.get("httpGet") or {}).get("port") != "admin":
            fail(where, f"jwks-sidecar: {probe} on the admin port missing")
        elif path and p["httpGet"].get("path") != path:
            fail(where, f"jwks-sidecar: {probe} should probe {path}")
    res = c.get("resources") or {}
    if not (res.get("requests") or {}).get("memory") or not (res.get("limits") or {}).get("memory"):
        fail(where, "jwks-sidecar: memory request and limit required")
    ports = {p["name"] for p in c.get("ports", [])}
    if not {"proxy", "admin"} <= ports:
        fail(where, f"jwks-sidecar: ports proxy and admin required, got {sorted(ports)}")
    if helm and not (tmpl.get("metadata", {}).get("annotations") or {}).get("checksum/config"):
        fail(where, "pod template lacks the checksum/config annotation")


def cmd_validate(args):
    import kubernetes_validate

    mode = None
    helm = False
    files = []
    for a in args:
        if a == "--sidecar":
            mode = "sidecar"
        elif a == "--standalone":
            mode = "standalone"
        elif a == "--helm":
            helm = True
        else:
            files.append(a)
    counts = {"schema": 0, "crd": 0}
    for path in files:
        docs = load_docs(path)
        if not docs:
            fail(path, "no objects rendered")
        kinds = []
        # A service-account token may be mounted only when a provider's config reads it.
        needs_token = any("/var/run/secrets/kubernetes.io/serviceaccount/" in (d.get("data") or {}).get("config.toml", "")
                          for d in docs if d.get("kind") == "ConfigMap")
        for doc in docs:
            where = f"{os.path.basename(path)}: {name_of(doc)}"
            kinds.append(doc.get("kind"))
            if (doc.get("apiVersion"), doc.get("kind")) in CRD_KINDS:
                check_crd(where, doc)
                counts["crd"] += 1
                continue
            for v in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(doc, v, strict=True)
                    counts["schema"] += 1
                except Exception as e:  # noqa: BLE001 - report any validation failure
                    msg = getattr(e, "message", None) or str(e)
                    fail(where, f"Kubernetes {v} schema: {msg.splitlines()[0]}")
            if mode:
                check_workload(where, doc, mode, helm, needs_token)
        print(f"   {os.path.basename(path)}: {len(docs)} objects ({', '.join(sorted(set(map(str, kinds))))})")
    print(f"   {counts['schema']} object validations against Kubernetes {', '.join(K8S_VERSIONS)} schemas (strict), {counts['crd']} custom resources checked structurally")


# --- config ---------------------------------------------------------------------------------
def toml_key(k):
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else json.dumps(k)


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(v)


def to_toml(doc):
    out = []
    for k, v in doc.items():
        if not isinstance(v, dict) and not (isinstance(v, list) and v and isinstance(v[0], dict)):
            out.append(f"{toml_key(k)} = {toml_value(v)}")
    for k, v in doc.items():
        if isinstance(v, dict):
            out.append(f"\n[{toml_key(k)}]")
            out += [f"{toml_key(kk)} = {toml_value(x)}" for kk, x in v.items()]
    for k, v in doc.items():
        if isinstance(v, list) and v and isinstance(v[0], dict):
            for item in v:
                out.append(f"\n[[{toml_key(k)}]]")
                out += [f"{toml_key(kk)} = {toml_value(x)}" for kk, x in item.items()]
    return "\n".join(out) + "\n"


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "lib"))
from ports import free_port  # noqa: E402  (never the same port twice in one process)


def start_and_probe(binary, cfg):
    """Runs the binary with cfg; returns (ok, stderr)."""
    admin = free_port()
    cfg.setdefault("proxy", {})["listen"] = f"127.0.0.1:{free_port()}"
    cfg.setdefault("admin", {})["listen"] = f"127.0.0.1:{admin}"
    if "authz" in cfg:
        for k in ("listen", "grpc_listen"):
            if k in cfg["authz"]:
                cfg["authz"][k] = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "config.toml")
        with open(path, "w") as f:
            f.write(to_toml(cfg))
        env = {k: v for k, v in os.environ.items() if not k.startswith("JWKS_SIDECAR_") and k != "RUST_LOG"}
        errf = open(os.path.join(d, "stderr"), "w+")
        proc = subprocess.Popen([binary, "--config", path], stdout=subprocess.DEVNULL, stderr=errf, env=env)
        ok = False
        why = ""
        try:
            # Generous (a debug build on a loaded CI machine), with early exit.
            timeout = 30
            deadline = time.time() + timeout
            while proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/healthz", timeout=2) as r:
                        if r.status == 200:
                            ok = True
                            break
                except OSError:
                    pass
                if time.time() >= deadline:
                    why = f"still running, but its /healthz did not answer 200 within {timeout}s\n"
                    break
                time.sleep(0.1)
            if not ok and not why:
                why = f"exited with status {proc.returncode}\n"
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        errf.seek(0)
        return ok, why + errf.read()


TEST_JWKS = '{"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": "k1", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}'


def test_ca_pem():
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jwks-sidecar test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def replace_mounted_files(cfg, d):
    """Files that Kubernetes would mount (CA bundles, secrets, JWKS files) are replaced by
    test files so the binary's start-up checks can run here. Returns the keys replaced."""
    replaced = []
    for i, p in enumerate(cfg.get("providers", [])):
        if "ca_file" in p:
            path = os.path.join(d, f"ca-{i}.pem")
            open(path, "wb").write(test_ca_pem())
            p["ca_file"] = path
            replaced.append(f"providers[{i}].ca_file")
        if "jwks_file" in p:
            path = os.path.join(d, f"jwks-{i}.json")
            open(path, "w").write(TEST_JWKS)
            p["jwks_file"] = path
            replaced.append(f"providers[{i}].jwks_file")
        for j, h in enumerate(p.get("fetch_headers", [])):
            if "value_from_file" in h:
                path = os.path.join(d, f"header-{i}-{j}")
                open(path, "w").write("test-secret\n")
                h["value_from_file"] = path
                replaced.append(f"providers[{i}].fetch_headers[{j}].value_from_file")
    return replaced


def remove_key(cfg, key):
    removed = False
    if key in cfg:
        del cfg[key]
        removed = True
    for p in cfg.get("providers", []):
        if key in p:
            del p[key]
            removed = True
    return removed


def cmd_config(args):
    binary, files = args[0], args[1:]
    if not os.access(binary, os.X_OK):
        fail(binary, "binary not found (it is built by `cargo test --all-targets`)")
        return
    n = 0
    for path in files:
        for doc in load_docs(path):
            if doc.get("kind") != "ConfigMap" or "config.toml" not in (doc.get("data") or {}):
                continue
            where = f"{os.path.basename(path)}: {name_of(doc)} config.toml"
            try:
                cfg = tomllib.loads(doc["data"]["config.toml"])
            except tomllib.TOMLDecodeError as e:
                fail(where, f"not valid TOML: {e}")
                continue
            n += 1
            stripped = []
            filedir = tempfile.mkdtemp(prefix="jwks-files-")
            replaced = replace_mounted_files(cfg, filedir)
            while True:
                ok, err = start_and_probe(binary, json.loads(json.dumps(cfg)))
                if ok:
                    break
                m = re.search(r"unknown field(?::? found)? `(\w+)`", err)
                if m and m.group(1) in PENDING_KEYS and remove_key(cfg, m.group(1)):
                    stripped.append(m.group(1))
                    continue
                lines = err.strip().splitlines()
                fail(where, "the binary refused it (" + lines[0] + "):\n      " + "\n      ".join(lines[1:][-8:]))
                break
            shutil.rmtree(filedir, ignore_errors=True)
            if ok:
                extra = f" (NOTE: this build does not know {', '.join(stripped)} yet; validated without)" if stripped else ""
                if replaced:
                    extra += f" (mounted files replaced by test files: {len(replaced)})"
                print(f"   {where}: accepted by the binary{extra}")
                if stripped:
                    notes.append(f"{where}: {', '.join(stripped)} not supported by this build")
    if n == 0:
        fail(" ".join(files), "no ConfigMap with config.toml found")


def main():
    if len(sys.argv) < 3 or sys.argv[1] not in ("validate", "config"):
        print(__doc__)
        return 2
    {"validate": cmd_validate, "config": cmd_config}[sys.argv[1]](sys.argv[2:])
    for p in problems:
        print(f"FAIL {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
