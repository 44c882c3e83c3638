"""Client side helpers: an mTLS channel for a named identity, and a stub."""

import pathlib

import grpc

from reserve_ledger.v1 import alerts_pb2_grpc, ledger_pb2_grpc

# Explicit, and gRPC's default: the server cuts every page and batch at 1 MiB, so 4 MiB always suffices.
RECEIVE_BYTES_MAX = 4 * 1024 * 1024


def secure_channel(address: str, certs_dir: str | pathlib.Path, identity: str) -> grpc.Channel:
    directory = pathlib.Path(certs_dir)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(directory / "ca.pem").read_bytes(),
        private_key=(directory / f"{identity}.key").read_bytes(),
        certificate_chain=(directory / f"{identity}.pem").read_bytes())
    return grpc.secure_channel(address, credentials, options=[("grpc.ssl_target_name_override", "localhost"),
                                                              ("grpc.max_receive_message_length", RECEIVE_BYTES_MAX)])


def ledger_stub(address: str, certs_dir: str | pathlib.Path, identity: str):
    return ledger_pb2_grpc.ReserveLedgerServiceStub(secure_channel(address, certs_dir, identity))


def alert_stub(address: str, certs_dir: str | pathlib.Path, identity: str):
    return alerts_pb2_grpc.AlertServiceStub(secure_channel(address, certs_dir, identity))
