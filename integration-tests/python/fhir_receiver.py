"""A FHIR R4 server's DiagnosticReport endpoint, as an EHR would offer it:
conditional update (`PUT /fhir/DiagnosticReport?identifier=system|value`)
creates the resource (201) or replaces the one with that identifier (200),
after validating it with fhir.resources 6.4.0 (400 with an
OperationOutcome when invalid).

Usage: fhir_receiver.py PORT_FILE RECORD_FILE [--token T]
With --token, a request without `Authorization: Bearer T` is answered 401.
Writes its port to PORT_FILE and one JSON line per request to RECORD_FILE:
{"identifier", "status", "answer", "version", "error"}.
"""

import json
import os
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fhir.resources import construct_fhir_element

port_file, record_file = sys.argv[1], sys.argv[2]
token = sys.argv[sys.argv.index("--token") + 1] if "--token" in sys.argv else None
stored = {}


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_PUT(self):
        url = urllib.parse.urlparse(self.path)
        query = urllib.parse.parse_qs(url.query)
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        record = {"identifier": (query.get("identifier") or [""])[0], "error": ""}
        if token is not None and self.headers.get("authorization") != f"Bearer {token}":
            record["answer"] = 401
            record["error"] = "no or wrong bearer token"
            with open(record_file, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.send_response(401)
            self.send_header("www-authenticate", "Bearer")
            self.send_header("content-length", "0")
            self.end_headers()
            return
        try:
            if url.path != "/fhir/DiagnosticReport" or not record["identifier"]:
                raise ValueError(f"not a conditional update of a DiagnosticReport: {self.path}")
            data = json.loads(body)
            resource = construct_fhir_element(data["resourceType"], data)
            system, value = record["identifier"].split("|", 1)
            if not any(i.system == system and i.value == value for i in resource.identifier):
                raise ValueError("the body's identifier is not the one the URL names")
            record["status"] = resource.status
            version = stored.get(record["identifier"], 0) + 1
            stored[record["identifier"]] = version
            record["version"] = version
            code = 201 if version == 1 else 200
        except Exception as e:
            record["error"] = f"{type(e).__name__}: {e}"
            code = 400
        record["answer"] = code
        with open(record_file, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        outcome = {"resourceType": "OperationOutcome", "issue": [
            {"severity": "error" if code == 400 else "information", "code": "invalid" if code == 400 else "informational",
             "diagnostics": record["error"] or "stored"}]}
        payload = json.dumps(outcome).encode()
        self.send_response(code)
        self.send_header("content-type", "application/fhir+json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.replace(port_file + ".tmp", port_file)
server.serve_forever()
