"""Sends one HL7 v2 message over MLLP on TLS and prints the answer.

Usage: mllp_tls_send.py HOST PORT CA [CERT KEY] < message
Trusts CA (PEM) for the server's certificate; presents CERT and KEY as
the client's when given. The message is read from stdin, its segments
separated by CR or LF. Prints the ACK with CRs as newlines; exits 2 when
the TLS handshake fails (printing why), 3 when no answer came.
Python's ssl module (OpenSSL), not the Rust stack that serves it.
"""

import socket
import ssl
import sys

host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
context = ssl.create_default_context(cafile=ca)
if len(sys.argv) > 5:
    context.load_cert_chain(sys.argv[4], sys.argv[5])
message = "\r".join(line for line in sys.stdin.read().replace("\r", "\n").split("\n") if line)
frame = b"\x0b" + (message + "\r").encode() + b"\x1c\r"
try:
    with socket.create_connection((host, port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(frame)
            answer = b""
            while not answer.endswith(b"\x1c\r"):
                chunk = tls.recv(65536)
                if not chunk:
                    break
                answer += chunk
except ssl.SSLError as e:
    print(f"TLS handshake failed: {e}")
    sys.exit(2)
if not answer:
    print("no answer")
    sys.exit(3)
print(answer.strip(b"\x0b\x1c\r").decode().replace("\r", "\n"))
