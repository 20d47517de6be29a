"""A TLS front for an Open Inference Protocol v2 server, as an ingress or a
sidecar puts before MLServer (whose gRPC port is plain): it serves the
protocol over TLS and passes each call to the upstream. Runs in MLServer's
venv (grpcio and MLServer's generated stubs).

Usage: tls_front.py CERT.pem KEY.pem UPSTREAM(host:port) PORT_FILE
Writes the port it listens on (127.0.0.1) to PORT_FILE once it serves.
"""

import os
import sys
from concurrent import futures

import grpc
from mlserver.grpc import dataplane_pb2_grpc as oip

cert, key, upstream, port_file = sys.argv[1:5]


class Front(oip.GRPCInferenceServiceServicer):
    def __init__(self, upstream: str):
        self._upstream = oip.GRPCInferenceServiceStub(grpc.insecure_channel(upstream))

    def ServerReady(self, request, context):
        return self._upstream.ServerReady(request)

    def ModelReady(self, request, context):
        return self._upstream.ModelReady(request)

    def ModelInfer(self, request, context):
        return self._upstream.ModelInfer(request)


with open(cert, "rb") as f:
    chain = f.read()
with open(key, "rb") as f:
    private = f.read()
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
oip.add_GRPCInferenceServiceServicer_to_server(Front(upstream), server)
port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([(private, chain)]))
server.start()
with open(port_file + ".tmp", "w") as f:
    f.write(str(port))
os.replace(port_file + ".tmp", port_file)
server.wait_for_termination()
