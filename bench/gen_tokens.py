#!/usr/bin/env python3
"""Generate the benchmark's keys, JWKS and tokens into a directory (never committed).

Writes into OUT_DIR:
  jwks.json                 RS256 (2048-bit, kid rs1), ES256 (P-256, kid es1), EdDSA (Ed25519, kid ed1)
  tokens-rs256-1.txt        one RS256 token
  tokens-es256-1.txt        one ES256 token
  tokens-eddsa-1.txt        one EdDSA token
  tokens-rs256-10k.txt      10,000 distinct RS256 tokens (distinct sub and jti)
  tokens-eddsa-100k.txt     100,000 distinct EdDSA tokens (for the bounded-memory row; EdDSA
                            because signing 100k RSA tokens in Python takes minutes)
  dpop-holder-es256.pem     the DPoP holder's (client's) P-256 private key; its proofs are made
                            per row by gen_dpop.py
  tokens-es256-dpop-1.txt   one ES256 token bound to that key (cnf.jkt = its RFC 7638 thumbprint)
  tokens-eddsa-dpop-1.txt   one EdDSA token bound to that key
  tampered-<file>.txt       the first token of each file with one signature byte changed

Usage: gen_tokens.py OUT_DIR ISSUER AUDIENCE [--many N10K] [--huge N100K]
"""
import argparse
import base64
import json
import os
import time

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def uint_b64u(n: int, length: int | None = None) -> str:
    length = length or (n.bit_length() + 7) // 8
    return b64u(n.to_bytes(length, "big"))


class Signer:
    def __init__(self, alg: str, kid: str):
        self.alg, self.kid = alg, kid
        if alg == "RS256":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pub = self.key.public_key().public_numbers()
            self.jwk = {"kty": "RSA", "kid": kid, "alg": alg, "use": "sig",
                        "n": uint_b64u(pub.n), "e": uint_b64u(pub.e)}
        elif alg == "ES256":
            self.key = ec.generate_private_key(ec.SECP256R1())
            pub = self.key.public_key().public_numbers()
            self.jwk = {"kty": "EC", "kid": kid, "alg": alg, "use": "sig", "crv": "P-256",
                        "x": uint_b64u(pub.x, 32), "y": uint_b64u(pub.y, 32)}
        elif alg == "EdDSA":
            self.key = ed25519.Ed25519PrivateKey.generate()
            raw = self.key.public_key().public_bytes_raw()
            self.jwk = {"kty": "OKP", "kid": kid, "alg": alg, "use": "sig", "crv": "Ed25519",
                        "x": b64u(raw)}
        else:
            raise ValueError(alg)
        header = {"alg": alg, "typ": "JWT", "kid": kid}
        self.header_b64 = b64u(json.dumps(header, separators=(",", ":")).encode())

    def sign(self, claims: dict) -> str:
        payload = b64u(json.dumps(claims, separators=(",", ":")).encode())
        signing_input = f"{self.header_b64}.{payload}".encode()
        if self.alg == "RS256":
            sig = self.key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif self.alg == "ES256":
            r, s = decode_dss_signature(self.key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
            sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS: raw r||s
        else:
            sig = self.key.sign(signing_input)
        return f"{signing_input.decode()}.{b64u(sig)}"


def tamper(token: str) -> str:
    head, payload, sig = token.split(".")
    mid = len(sig) // 2
    c = "A" if sig[mid] != "A" else "B"
    return f"{head}.{payload}.{sig[:mid]}{c}{sig[mid + 1:]}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("issuer")
    ap.add_argument("audience")
    ap.add_argument("--many", type=int, default=10_000)
    ap.add_argument("--huge", type=int, default=100_000)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    now = int(time.time())
    signers = {alg: Signer(alg, kid) for alg, kid in
               (("RS256", "rs1"), ("ES256", "es1"), ("EdDSA", "ed1"))}
    with open(os.path.join(a.out, "jwks.json"), "w") as f:
        json.dump({"keys": [s.jwk for s in signers.values()]}, f, indent=1)

    def claims(i: int) -> dict:
        return {"iss": a.issuer, "sub": f"bench-user-{i}", "aud": a.audience,
                "iat": now, "nbf": now - 60, "exp": now + 10 * 365 * 86400,
                "jti": f"bench-{i:08d}", "scope": "read write",
                "email": f"user{i}@bench.example"}

    def write(name: str, alg: str, count: int, extra: dict | None = None) -> None:
        s = signers[alg]
        path = os.path.join(a.out, name)
        first = None
        with open(path, "w") as f:
            for i in range(count):
                t = s.sign({**claims(i), **(extra or {})})
                first = first or t
                f.write(t + "\n")
        with open(os.path.join(a.out, "tampered-" + name), "w") as f:
            f.write(tamper(first) + "\n")

    write("tokens-rs256-1.txt", "RS256", 1)
    write("tokens-es256-1.txt", "ES256", 1)
    write("tokens-eddsa-1.txt", "EdDSA", 1)
    write("tokens-rs256-10k.txt", "RS256", a.many)
    write("tokens-eddsa-100k.txt", "EdDSA", a.huge)
    # DPoP (RFC 9449): a holder (client) key, and tokens bound to it by its thumbprint
    from gen_dpop import public_jwk, thumbprint
    holder = ec.generate_private_key(ec.SECP256R1())
    with open(os.path.join(a.out, "dpop-holder-es256.pem"), "wb") as f:
        f.write(holder.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cnf = {"cnf": {"jkt": thumbprint(public_jwk(holder))}}
    write("tokens-es256-dpop-1.txt", "ES256", 1, cnf)
    write("tokens-eddsa-dpop-1.txt", "EdDSA", 1, cnf)


if __name__ == "__main__":
    main()
