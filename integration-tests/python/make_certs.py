"""Writes a test CA and a server certificate it signs, for TLS tests.

Usage: make_certs.py DIR [NAME] [--expired] [--names NAME,...]
                     [--clients LABEL=SAN,...]
Writes DIR/NAME-ca.pem, DIR/NAME-server.pem and DIR/NAME-server.key (NAME
defaults to "test"): the server's names are 127.0.0.1 and localhost (or
those of --names: DNS names and IP addresses); valid from an hour ago for
a day, or, with --expired, from two days ago until yesterday. Keys are
P-256. With --clients, also a client certificate (clientAuth) per LABEL,
DIR/NAME-client-LABEL.pem and .key, whose subject alternative name is SAN
(a URI when it has "://", else a DNS name), signed by the same CA.
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
clients = []
if "--clients" in args:
    clients = [c.split("=", 1) for c in args[args.index("--clients") + 1].split(",")]
    del args[args.index("--clients") : args.index("--clients") + 2]
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

pem = serialization.Encoding.PEM


def issue(file, common_name, alt_names, usage):
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    with open(os.path.join(out, f"{file}.pem"), "wb") as f:
        f.write(cert.public_bytes(pem))
    with open(os.path.join(out, f"{file}.key"), "wb") as f:
        f.write(
            key.private_bytes(
                pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )


with open(os.path.join(out, f"{name}-ca.pem"), "wb") as f:
    f.write(ca.public_bytes(pem))
issue(
    f"{name}-server",
    names[0],
    [general_name(n) for n in names],
    ExtendedKeyUsageOID.SERVER_AUTH,
)
for label, san in clients:
    alt = x509.UniformResourceIdentifier(san) if "://" in san else x509.DNSName(san)
    issue(f"{name}-client-{label}", san, [alt], ExtendedKeyUsageOID.CLIENT_AUTH)
