#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/<target>/ (run from anywhere; overwrites them).

Seeds are structural: hand-written tokens, paths, headers, configs and key documents. The
public keys and certificates in the jwks_parse seeds are generated here from throwaway
private keys that are discarded at once; nothing secret is written. Needs `cryptography`.
"""
import base64
import json
import os
import shutil
import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")


def b64(b):
    if isinstance(b, str):
        b = b.encode()
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def j(v):
    return json.dumps(v, separators=(",", ":"))


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def uint(n):
    return b64(n.to_bytes((n.bit_length() + 7) // 8, "big"))


NOW = 1_700_000_000
MAIN = "https://issuer.fuzz.test/"
AUD = "api://fuzz"


def tokens():
    t = "token_parse_and_select"
    good = {"iss": MAIN, "sub": "u1", "aud": AUD, "exp": NOW + 600, "org": {"id": "o1"},
            "roles": ["a", "b"]}
    tenant = {"iss": "https://login.fuzz.test/t1/v2.0", "tid": "t1", "aud": [AUD],
              "exp": NOW + 600, "sub": "x"}
    hdr = {"alg": "EdDSA", "kid": "k1", "typ": "JWT"}
    # Mode byte: bit 0 = sign it (1) or raw token (0); bit 1 = tenant key; bit 2 = corrupt sig.
    signed = [
        ("signed_good", 1, hdr, good),
        ("signed_tenant", 3, {"alg": "ES256", "kid": "k2"}, tenant),
        ("signed_tampered", 5, hdr, good),
        ("signed_expired", 1, hdr, dict(good, exp=NOW - 3600)),
        ("signed_nbf_future", 1, hdr, dict(good, nbf=NOW + 3600)),
        ("signed_bad_aud", 1, hdr, dict(good, aud=["other"])),
        ("signed_no_kid", 1, {"alg": "EdDSA"}, good),
        ("signed_alg_confusion", 1, {"alg": "ES256", "kid": "k1"}, good),
        ("signed_tenant_not_allowed", 3, {"alg": "ES256", "kid": "k2"},
         dict(tenant, iss="https://login.fuzz.test/evil/v2.0", tid="evil")),
        ("signed_control_claim", 1, hdr, dict(good, sub="a\r\nx-jwt-sub: admin")),
        ("signed_unicode_claim", 1, hdr, dict(good, sub="ü\u2028x", roles=[1, True, "r"])),
        ("signed_exp_string", 1, hdr, dict(good, exp=str(NOW + 600))),
        ("signed_crit", 1, dict(hdr, crit=["b64"], b64=False), good),
    ]
    for name, mode, h, c in signed:
        write(t, name, bytes([mode]) + j(h).encode() + b"\n" + j(c).encode())
    sig = b64(b"\x00" * 64)
    raw = {
        "raw_eddsa_fake_sig": f"{b64(j(hdr))}.{b64(j(good))}.{sig}",
        "raw_alg_none": f"{b64(j({'alg': 'none'}))}.{b64(j(good))}.",
        "raw_alg_none_sig": f"{b64(j({'alg': 'none'}))}.{b64(j(good))}.{sig}",
        "raw_hs256": f"{b64(j({'alg': 'HS256', 'kid': 'k1'}))}.{b64(j(good))}.{sig}",
        "raw_jwe": "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d",
        "raw_padded": f"{b64(j(hdr))}=.{b64(j(good))}.{sig}",
        "raw_unknown_iss": f"{b64(j(hdr))}.{b64(j(dict(good, iss='https://evil/')))}.{sig}",
        "raw_kid_number": f"{b64(j({'alg': 'EdDSA', 'kid': 7}))}.{b64(j(good))}.{sig}",
        "raw_payload_array": f"{b64(j(hdr))}.{b64('[1,2]')}.{sig}",
        "raw_dup_iss": b64(j(hdr)) + "." + b64('{"iss":"x","iss":"%s","exp":1}' % MAIN) + "." + sig,
    }
    for name, tok in raw.items():
        write(t, name, b"\x00" + tok.encode())


def keys():
    t = "jwks_parse"
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    p256 = ec.generate_private_key(ec.SECP256R1())
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    ed = ed25519.Ed25519PrivateKey.generate()

    def rsa_jwk(k, kid, **extra):
        n = k.public_numbers()
        return dict({"kty": "RSA", "kid": kid, "n": uint(n.n), "e": uint(n.e)}, **extra)

    def ec_jwk(k, kid, crv, size, **extra):
        n = k.public_numbers()
        return dict({"kty": "EC", "kid": kid, "crv": crv, "x": b64(n.x.to_bytes(size, "big")),
                     "y": b64(n.y.to_bytes(size, "big"))}, **extra)

    ed_x = b64(ed.public_key().public_bytes(serialization.Encoding.Raw,
                                             serialization.PublicFormat.Raw))
    pem = lambda k: k.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fuzz")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(p256.public_key()).serial_number(1).not_valid_before(start)
            .not_valid_after(start + datetime.timedelta(days=3650))
            .sign(p256, hashes.SHA256()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_der = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    p256 = p256.public_key()

    # Control byte: max_keys = (b & 3) + 1; bit 2 = ES256-only allow-list.
    all4 = b"\x03"
    docs = {
        "jwks_mixed": (all4, {"keys": [
            rsa_jwk(rsa_key, "r1", alg="RS256", use="sig"),
            ec_jwk(p256, "e1", "P-256", 32),
            ec_jwk(p384, "e2", "P-384", 48, alg="ES384"),
            {"kty": "OKP", "crv": "Ed25519", "kid": "d1", "x": ed_x}]}),
        "jwks_skips": (all4, {"keys": [
            rsa_jwk(rsa_key, "enc", use="enc"),
            rsa_jwk(weak, "weak"),
            {"kty": "oct", "kid": "sym", "k": b64(b"not-a-real-secret")},
            ec_jwk(p256, "ops", "P-256", 32, key_ops=["encrypt"]),
            ec_jwk(p256, "mismatch", "P-256", 32, alg="RS256"),
            {"kty": "EC", "kid": "bad", "crv": "P-521", "x": "AA", "y": "AA"},
            {"kty": "OKP", "crv": "X25519", "kid": "x", "x": ed_x},
            rsa_jwk(rsa_key, "priv", d="AQAB")]}),
        "jwks_x5c_only": (all4, {"keys": [{"kty": "EC", "kid": "c1", "x5c": [cert_der]}]}),
        "jwks_over_limit": (b"\x00", {"keys": [ec_jwk(p256, f"k{i}", "P-256", 32)
                                              for i in range(3)]}),
        "jwks_es256_only": (b"\x07", {"keys": [rsa_jwk(rsa_key, "r1"),
                                                ec_jwk(p256, "e1", "P-256", 32)]}),
        "jwks_stytch": (all4, {"keys": [ec_jwk(p256, "e1", "P-256", 32)],
                               "request_id": "x", "status_code": 200}),
        "jwks_dup_kid": (all4, {"keys": [ec_jwk(p256, "same", "P-256", 32),
                                         {"kty": "OKP", "crv": "Ed25519", "kid": "same",
                                          "x": ed_x}]}),
        "kid_pem_map": (all4, {"c1": cert_pem, "p1": pem(rsa_key)}),
        # max_keys = 2: "a" gives one key, "b" two more, in one document.
        "kid_pem_map_multi_block": (b"\x01", {"a": pem(p256), "b": pem(p384) + pem(rsa_key)}),
        "jwks_keys_not_array": (all4, {"keys": {"kty": "RSA"}}),
    }
    for n, (ctl, doc) in docs.items():
        write(t, n, ctl + json.dumps(doc, indent=1).encode())
    write(t, "pem_public_key", all4 + pem(ed.public_key()).encode())
    write(t, "pem_cert_chain", b"\x01" + (cert_pem + cert_pem + pem(p384)).encode())
    write(t, "pem_rsa_public_key_label", all4 + rsa_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.PKCS1))
    write(t, "pem_garbage", all4 + b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def claims():
    t = "claims_render"
    seeds = {
        "string": (0, 64, '"user-1"'),
        "crlf": (0, 64, '"a\\r\\nx-evil: 1"'),
        "nul": (0, 64, '"a\\u0000b"'),
        "unicode": (0, 64, '"m\\u00fcller \\u2028 \\ud83d\\ude00"'),
        "c1_control": (0, 64, '"a\\u0085b"'),
        "array_comma": (0, 64, '["a","b",1,true]'),
        "array_json": (1, 64, '["a","b\\n",{"x":1}]'),
        "array_nested": (0, 64, '[["a"]]'),
        "object": (1, 64, '{"id":"o1","n":[1,2]}'),
        "number": (0, 4, "1e400"),
        "big_number": (0, 64, "123456789012345678901234567890"),
        "null": (0, 64, "null"),
        "too_long": (0, 1, '"abcdefgh"'),
        "not_json": (0, 64, "plain text \x7f \x1b[0m"),
        "bool": (1, 64, "false"),
    }
    for n, (fmt, cap, body) in seeds.items():
        write(t, n, bytes([fmt, cap]) + body.encode())


def config():
    t = "config_parse"
    root = os.path.dirname(HERE)
    os.makedirs(os.path.join(SEEDS, t), exist_ok=True)
    shutil.copyfile(os.path.join(root, "config.example.toml"), os.path.join(SEEDS, t, "example.toml"))
    write(t, "minimal.toml", '[[providers]]\nname = "a"\nissuer = "https://a.test/"\n'
          'jwks_uri = "https://a.test/jwks.json"\naudiences = ["x"]\n')
    write(t, "inline_jwks.toml", '[proxy]\nupstream = "http://127.0.0.1:1"\n'
          'public_paths = ["/healthz", "/a/../b"]\n[[providers]]\nname = "p"\nissuer = "i"\n'
          'jwks = { keys = [ { kty = "OKP", crv = "Ed25519", kid = "k1", x = "AAAA" } ] }\n'
          'algorithms = ["EdDSA", "HS256", "none"]\nleeway = "1h 2m 3s 4ms"\n'
          'max_keys = 0\nkid_miss_min_interval = "0s"\n'
          '[providers.claim_headers]\nsub = "X-Jwt-Sub"\n"a.b" = "bad header"\n')
    write(t, "rules.toml", '[default_rule]\naction = "deny"\n[[rules]]\nname = "r"\n'
          'match = { path_regex = "/(a+)+$", methods = ["GET"], host = "*.x.test" }\n'
          'require = { any = [ { scopes = ["s"] }, { claims = { "o.r" = { contains = "x" } } } ] }\n'
          'deny_status = 418\n[[providers]]\nname = "p"\nissuer = "https://t/{tenantid}/v2.0"\n'
          'discovery = true\n')
    write(t, "durations.toml", '[proxy]\nupstream_timeout = "18446744073709551615s"\n'
          'header_read_timeout = "0ns"\nlisten = "[::1]:0"\n[token_cache]\nmax_entries = 0\n'
          'max_bytes = 18446744073709551615\n[runtime]\nworker_threads = 1000000\n')
    write(t, "env_like.toml", '[log]\nlevel = "jwks_sidecar=trace,[{x}]"\nformat = "json"\n'
          '[reload]\ninterval = "1ns"\n[authz]\nlisten = "127.0.0.1:0"\npath_prefix = ""\n')


def paths():
    t = "path_normalize"
    for i, p in enumerate(["/", "/a/b/../c/./d//e/", "/%2e%2E/x", "/a/%2F/b", "/a/%5c", "/a\\b",
                           "/..;/admin", "/a/.;x/b", "/%41%7e%2d%25%7F", "/a/%zz", "/a/%",
                           "/..", "//host/x", "/a/b/..", "/a/./", "/%00", "/é", "/a b",
                           "/public/..%2Fadmin", "/public/%2e%2e/admin", "/x;y/..;z/",
                           "/a/%2e%2e%2f", "/%%32%65"]):
        for allow in (0, 1):
            write(t, f"p{i:02}_{allow}", bytes([allow]) + p.encode())
    # Double encoding, parameters, encoded controls, overlong and look-alike forms, each with
    # every opt-in combination (byte 0 bits: encoded slash, double encoding, parameters).
    for i, p in enumerate(["/public/%252e%252e/admin", "/p/%25%32%65%25%32%65/x", "/p%25252f",
                           "/admin;jsessionid=1", "/admin%09", "/p/%c0%ae%c0%ae/a", "/p%EF%BC%8F",
                           "/100%25", "/caf%C3%A9", "/a%2541", "/a%C2%85", "/a/%3B", "/a%253b"]):
        for ctl in range(8):
            write(t, f"d{i:02}_{ctl}", bytes([ctl]) + p.encode())


def extract():
    t = "token_extract"
    seeds = {
        "bearer": "Authorization: Bearer abc.def.ghi\n",
        "bearer_case": "authorization: bEaReR \t abc.def.ghi  \n",
        "two_auth": "Authorization: Bearer a.b.c\nAuthorization: Bearer a.b.d\n",
        "same_twice": "Authorization: Bearer a.b.c\nx-access-token: a.b.c\n?access_token=a.b.c\n",
        "comma": "Authorization: Bearer a.b.c, Bearer d.e.f\n",
        "basic": "Authorization: Basic dXNlcjpwYXNz\n",
        "bearer_only": "Authorization: Bearer\n",
        "cookie": "Cookie: a=1; access_token=\"t.o.k\"; b=2\nCookie: access_token=t.o.k\n",
        "cookie_empty": "Cookie: access_token=; access_token\n",
        "query": "?x=1&access_token=q.u.e&access_token=q.u.e\n",
        "header_bearer": "x-access-token: Bearer h.e.d\n",
        "too_long": "Authorization: Bearer " + "a" * 300 + "\n",
    }
    for n, body in seeds.items():
        write(t, n, b"\x20" + body.encode())


if __name__ == "__main__":
    # Regenerate everything but the regression inputs found by fuzzing (regress_*).
    for root, _, files in os.walk(SEEDS):
        for f in files:
            if not f.startswith("regress_"):
                os.remove(os.path.join(root, f))
    tokens()
    keys()
    claims()
    os.makedirs(os.path.join(SEEDS, "config_parse"), exist_ok=True)
    config()
    paths()
    extract()
    for d in sorted(os.listdir(SEEDS)):
        print(d, len(os.listdir(os.path.join(SEEDS, d))))
