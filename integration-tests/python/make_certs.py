"""Writes a test CA and a server certificate it signs, for TLS tests.

Usage: make_certs.py DIR [NAME] [--expired] [--names NAME,...]
Writes DIR/NAME-ca.pem, DIR/NAME-server.pem and DIR/NAME-server.key (NAME
defaults to "test"): the server's names are 127.0.0.1 and localhost (or
those of --names: DNS names and IP addresses); valid from an hour ago for
a day, or, with --expired, from two days ago until yesterday. Keys are
P-256.
"""

import datetime
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

args = sys.argv[1:]
expired = "--expired" in args
names = ["localhost", "127.0.0.1"]
if "--names" in args:
    names = args[args.index("--names") + 1].split(",")
    del args[args.index("--names") : args.index("--names") + 2]
args = [a for a in args if a != "--expired"]
out = args[0]
name = args[1] if len(args) > 1 else "test"
now = datetime.datetime.now(datetime.timezone.utc)
start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=1)
if expired:
    start, end = now - datetime.timedelta(days=2), now - datetime.timedelta(days=1)


def general_name(n):
    try:
        return x509.IPAddress(ipaddress.ip_address(n))
    except ValueError:
        return x509.DNSName(n)


ca_key = ec.generate_private_key(ec.SECP256R1())
ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Meridian {name} test CA")])
ca = (
    x509.CertificateBuilder()
    .subject_name(ca_name)
    .issuer_name(ca_name)
    .public_key(ca_key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(now - datetime.timedelta(days=3))
    .not_valid_after(now + datetime.timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
    .add_extension(
        x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
    )
    .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
    .sign(ca_key, hashes.SHA256())
)

key = ec.generate_private_key(ec.SECP256R1())
cert = (
    x509.CertificateBuilder()
    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
    .issuer_name(ca_name)
    .public_key(key.public_key())
    .serial_number(x509.random_serial_number())
    .not_valid_before(start)
    .not_valid_after(end)
    .add_extension(
        x509.SubjectAlternativeName([general_name(n) for n in names]),
        critical=False,
    )
    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
    .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    .add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
    )
    .sign(ca_key, hashes.SHA256())
)

pem = serialization.Encoding.PEM
with open(os.path.join(out, f"{name}-ca.pem"), "wb") as f:
    f.write(ca.public_bytes(pem))
with open(os.path.join(out, f"{name}-server.pem"), "wb") as f:
    f.write(cert.public_bytes(pem))
with open(os.path.join(out, f"{name}-server.key"), "wb") as f:
    f.write(
        key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
