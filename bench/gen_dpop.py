#!/usr/bin/env python3
"""DPoP proofs (RFC 9449) for the benchmark's DPoP rows and bench/dpop_flood.py.

A proof is a JWT with header {"typ":"dpop+jwt","alg":...,"jwk":<holder public key>} and claims
{"htm","htu","iat","jti","ath"}; ath = base64url(SHA-256(access token)). Every proof is
single-use (the sidecar's replay cache), so a load run needs one per request: this writes N of
them, one per line, each with a distinct jti, signed on all cores (multiprocessing).

The holder key is a PEM private key (P-256 -> ES256, Ed25519 -> EdDSA), written by
gen_tokens.py (dpop-holder-es256.pem), which also writes the tokens bound to it (cnf.jkt).

Usage: gen_dpop.py HOLDER_PEM TOKEN_FILE OUT_FILE N --htu URL [--htm GET] [--procs P]
Prints one line `GENJSON {"proofs":N,"seconds":S,"us_per_proof":U,"procs":P,"alg":A}`.
"""
import argparse
import base64
import hashlib
import json
import multiprocessing
import os
import secrets
import sys
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_holder(pem_path: str):
    with open(pem_path, "rb") as f:
        return serialization.load_pem_private_key(f.read(), password=None)


def public_jwk(key) -> dict:
    """The holder's public JWK, members in RFC 7638 order (the thumbprint's input order)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        pub = key.public_key().public_numbers()
        return {"crv": "P-256", "kty": "EC", "x": b64u(pub.x.to_bytes(32, "big")),
                "y": b64u(pub.y.to_bytes(32, "big"))}
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return {"crv": "Ed25519", "kty": "OKP", "x": b64u(key.public_key().public_bytes_raw())}
    raise ValueError(f"unsupported holder key {type(key).__name__}")


def thumbprint(jwk: dict) -> str:
    """RFC 7638: SHA-256 of the required members, sorted, no whitespace; base64url."""
    req = {"EC": ("crv", "kty", "x", "y"), "OKP": ("crv", "kty", "x"), "RSA": ("e", "kty", "n")}[jwk["kty"]]
    canon = json.dumps({k: jwk[k] for k in req}, separators=(",", ":"), sort_keys=True)
    return b64u(hashlib.sha256(canon.encode()).digest())


def ath(token: str) -> str:
    return b64u(hashlib.sha256(token.encode()).digest())


class Prover:
    """Makes proofs with one holder key for one (method, URL, token)."""

    def __init__(self, key, htm: str, htu: str, token: str):
        self.key = key
        self.alg = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "EdDSA"
        header = {"typ": "dpop+jwt", "alg": self.alg, "jwk": public_jwk(key)}
        self.head = b64u(json.dumps(header, separators=(",", ":")).encode())
        # the claims' constant parts, pre-serialised: only iat and jti change per proof
        self.pre = '{"htm":%s,"htu":%s,"ath":"%s","iat":' % (json.dumps(htm), json.dumps(htu), ath(token))

    def proof(self, jti: str, iat: int | None = None) -> str:
        iat = int(time.time()) if iat is None else iat
        claims = f'{self.pre}{iat},"jti":{json.dumps(jti)}}}'
        signing_input = f"{self.head}.{b64u(claims.encode())}".encode()
        if self.alg == "ES256":
            r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: raw r||s
        else:
            sig = self.key.sign(signing_input)
        return f"{signing_input.decode()}.{b64u(sig)}"


_W: dict = {}


def _init(pem: str, htm: str, htu: str, token: str, prefix: str) -> None:
    _W["p"] = Prover(load_holder(pem), htm, htu, token)
    _W["prefix"] = prefix


def _chunk(bounds: tuple[int, int]) -> str:
    p, prefix = _W["p"], _W["prefix"]
    return "".join(p.proof(f"{prefix}-{i:09d}") + "\n" for i in range(*bounds))


def generate(pem: str, token: str, out: str, n: int, htu: str, htm: str = "GET",
             procs: int | None = None, chunk: int = 5000) -> dict:
    """Writes n proofs (one per line, in jti order) to out; returns the timing."""
    procs = procs or os.cpu_count() or 1
    prefix = secrets.token_hex(6)  # jtis distinct across files too
    ranges = [(i, min(n, i + chunk)) for i in range(0, n, chunk)]
    t0 = time.monotonic()
    with open(out, "w") as f:
        if procs == 1:
            _init(pem, htm, htu, token, prefix)
            for r in ranges:
                f.write(_chunk(r))
        else:
            with multiprocessing.get_context("fork").Pool(procs, _init, (pem, htm, htu, token, prefix)) as pool:
                for text in pool.imap(_chunk, ranges):  # in order: iat rises with the line
                    f.write(text)
    secs = time.monotonic() - t0
    alg = Prover(load_holder(pem), htm, htu, token).alg
    return {"proofs": n, "seconds": round(secs, 2), "us_per_proof": round(secs * 1e6 / max(1, n), 1),
            "procs": procs, "alg": alg, "bytes": os.path.getsize(out)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("holder_pem")
    ap.add_argument("token_file")
    ap.add_argument("out")
    ap.add_argument("n", type=int)
    ap.add_argument("--htu", required=True)
    ap.add_argument("--htm", default="GET")
    ap.add_argument("--procs", type=int)
    a = ap.parse_args()
    with open(a.token_file) as f:
        token = f.readline().strip()
    res = generate(a.holder_pem, token, a.out, a.n, a.htu, a.htm, a.procs)
    print("GENJSON " + json.dumps(res), flush=True)


if __name__ == "__main__":
    sys.exit(main())
