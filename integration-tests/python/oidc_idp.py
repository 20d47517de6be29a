"""A stand-in OpenID Connect identity provider's signing side, for tests.

Usage:
  oidc_idp.py keys DIR [N]    writes DIR/idp-ec.pem (P-256), DIR/idp-rsa.pem
                              (RSA 2048) and DIR/jwks.json publishing both
                              (key ids "ec-N", ES256, and "rsa-N", RS256;
                              N is 1 unless given)
  oidc_idp.py token DIR ALG CLAIMS [N]
                              prints a JWT of CLAIMS (JSON) signed with
                              ALG (ES256 or RS256) by that key

Signed with `cryptography` directly (RFC 7515, 7518), not by the Rust
library that verifies it: the point is that another implementation's
tokens are taken.
"""

import base64
import json
import os
import sys

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def number(n, size=None):
    size = size or (n.bit_length() + 7) // 8
    return b64(n.to_bytes(size, "big"))


def private_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def keys(out, n):
    ec_key = ec.generate_private_key(ec.SECP256R1())
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with open(os.path.join(out, "idp-ec.pem"), "wb") as f:
        f.write(private_pem(ec_key))
    with open(os.path.join(out, "idp-rsa.pem"), "wb") as f:
        f.write(private_pem(rsa_key))
    e = ec_key.public_key().public_numbers()
    r = rsa_key.public_key().public_numbers()
    jwks = {
        "keys": [
            {"kty": "EC", "crv": "P-256", "x": number(e.x, 32), "y": number(e.y, 32),
             "kid": f"ec-{n}", "use": "sig", "alg": "ES256"},
            {"kty": "RSA", "n": number(r.n), "e": number(r.e),
             "kid": f"rsa-{n}", "use": "sig", "alg": "RS256"},
        ]
    }
    with open(os.path.join(out, "jwks.json"), "w") as f:
        json.dump(jwks, f)


def token(out, alg, claims, n):
    kid = {"ES256": f"ec-{n}", "RS256": f"rsa-{n}"}[alg]
    name = {"ES256": "idp-ec.pem", "RS256": "idp-rsa.pem"}[alg]
    with open(os.path.join(out, name), "rb") as f:
        key = serialization.load_pem_private_key(f.read(), password=None)
    header = {"alg": alg, "typ": "JWT", "kid": kid}
    signing_input = (b64(json.dumps(header).encode()) + "." + b64(claims.encode())).encode()
    if alg == "ES256":
        r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    else:
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    print(signing_input.decode() + "." + b64(signature))


if sys.argv[1] == "keys":
    keys(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "1")
else:
    token(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] if len(sys.argv) > 5 else "1")
