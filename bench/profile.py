#!/usr/bin/env python3
"""Where jwks-sidecar's CPU goes under load: perf record of the pinned proxy for one row.

  python3 bench/profile.py [public|rs256|rs256-cache|es256|eddsa] [SECONDS] [--keep=FILE]

Same placement as harness.py (wrk + nginx on core 0, proxy alone on core 1, one worker).
Prints `perf report` top symbols (self and children) to stdout; needs `perf` (linux-perf) and
a release build (debug = "line-tables-only" gives symbols). Bounded: wrk runs SECONDS + 4 s.
"""
import os
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ROWS = {
    "public": (None, True),
    "rs256": ("tokens-rs256-1.txt", False),
    "rs256-cache": ("tokens-rs256-1.txt", True),
    "es256": ("tokens-es256-1.txt", False),
    "eddsa": ("tokens-eddsa-1.txt", False),
}


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    keep = next((a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--keep=")), None)
    which = args[0] if args else "rs256"
    secs = int(args[1]) if len(args) > 1 else 5
    tok, cache = ROWS[which]
    work = tempfile.mkdtemp(prefix="jwks-prof-")
    toks = os.path.join(work, "tokens")
    subprocess.run([sys.executable, os.path.join(harness.HERE, "gen_tokens.py"), toks, harness.ISSUER,
                    harness.AUDIENCE, "--many", "1", "--huge", "1"], check=True)
    up = harness.Upstream(work)
    up.start()
    sc = harness.Sidecar(work, "sc", up, os.path.join(toks, "jwks.json"), cache)
    sc.start()
    tokens = os.path.join(toks, tok) if tok else None
    harness.sanity(sc, tokens, toks)
    path = "/api/bench" if tokens else "/public/bench"
    wrk = subprocess.Popen(["taskset", "-c", harness.LG_CPU, "wrk", "-t1", "-c32", f"-d{secs + 4}s",
                            "-s", os.path.join(harness.HERE, "wrk", "bench.lua"), sc.url(), "--",
                            tokens or "-", path], stdout=subprocess.DEVNULL)
    time.sleep(2)
    data = os.path.join(work, "perf.data")
    subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "1999", "-g", "-o", data,
                    "-p", str(sc.proc.pid), "--", "sleep", str(secs)], check=False)
    wrk.wait(timeout=secs + 60)
    sc.stop()
    harness.stop(up.proc)
    for args in (["--no-children"], ["--children"]):
        out = subprocess.run(["perf", "report", "-i", data, "--stdio", "-g", "none", "--percent-limit", "1.5",
                              "--sort", "symbol"] + args, capture_output=True, text=True).stdout
        print(f"==== {which}: perf report {' '.join(args)} ====")
        lines = [" ".join(ln.split()[:4 if "--children" in args else 3]) for ln in out.splitlines()
                 if ln.strip() and not ln.startswith("#")]
        print("\n".join(lines[:40]))
    if keep:
        subprocess.run(["cp", data, keep], check=True)
        print(f"perf data kept in {keep}")
    subprocess.run(["rm", "-rf", work])
    return 0


if __name__ == "__main__":
    sys.exit(main())
