"""`flux2-encoder health TARGET`: poll the standard grpc.health.v1 service until the encoder reports SERVING. Imports
no model library, so it answers in a fraction of a second (Kubernetes probes run it with TLS)."""

from __future__ import annotations

import time

from shared.defaults import SERVICE_NAME


def check_health(target: str, wait_s: float, tls: tuple[bytes | None, bytes | None, bytes | None] | None = None) -> int:
    """Poll grpc.health.v1 for the encoder service; 0 when SERVING, 1 otherwise.

    `tls` is (CA, client key, client certificate) PEM bytes for a TLS server.
    """
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + max(wait_s, 0.0)
    status = "UNREACHABLE"
    channel = (
        grpc.insecure_channel(target)
        if tls is None
        else grpc.secure_channel(target, grpc.ssl_channel_credentials(*tls))
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            timeout = min(5.0, max(deadline - time.monotonic(), 1.0))
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=timeout)
                status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as error:
                status = f"UNREACHABLE ({error.code().name})" if isinstance(error, grpc.Call) else "UNREACHABLE"
            if status == "SERVING" or time.monotonic() >= deadline:
                break
            time.sleep(0.25)
    print(f"{target}: {status}")
    return 0 if status == "SERVING" else 1
