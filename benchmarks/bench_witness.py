"""Time from a new signed tree head to its quorum of witness cosignatures, with local witness processes.

    python benchmarks/bench_witness.py [--witnesses 2] [--heads 20] [--data-dir DIR]

Starts `reserve-ledger witness serve` processes on loopback, a server (SQLite, mTLS) that sends them every new
head (`serve --witness ... --witness-quorum N`), then, head after head: one command (a new head signed in its
commit), and the wait until GetCheckpoint shows that head with N cosignatures. The feeds send the latest head
at most once a second (services/witness/gatherer.py), so the interval dominates; the HTTP round trip, the
witness's consistency check, its fsync and the cosignature are the rest.
"""

import argparse
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from reserve_ledger.v1 import audit_pb2 as apb  # noqa: E402
from reserve_ledger.v1 import audit_pb2_grpc  # noqa: E402
from reserve_ledger.v1 import ledger_pb2 as pb  # noqa: E402
from services.api.certs import init_certs  # noqa: E402
from services.api.client import ledger_stub, secure_channel  # noqa: E402
from services.compose import ServerConfig, build_server  # noqa: E402
from services.store.signing import SIGNING_KEY_FILE_NAME, load_or_create_signing_key  # noqa: E402
from services.witness import note  # noqa: E402
from services.witness.log import LogCheckpoints  # noqa: E402
from services.witness.witness import init_state  # noqa: E402

ORIGIN = "bench.reserve-ledger.example/ledger"
WAIT_S = 120


def start_witness(state: pathlib.Path, log_vkey: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "services.cli.main", "witness", "serve", "--state", str(state),
                                "--listen", "127.0.0.1:0", "--log", f"{ORIGIN}={log_vkey}"],
                               stdout=subprocess.PIPE, text=True)
    process.stdout.readline()
    return process, process.stdout.readline().split()[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--witnesses", type=int, default=2)
    parser.add_argument("--heads", type=int, default=20)
    parser.add_argument("--pause-s", type=float, default=0.0,
                        help="quiet time before each command (1.2 s or more: every head is the first after a quiet "
                             "spell and is sent at once; 0: back-to-back heads are batched one send a second)")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    directory = pathlib.Path(args.data_dir or tempfile.mkdtemp(prefix="bench-witness-"))
    certs = init_certs(directory / "certs")
    key = load_or_create_signing_key(directory / SIGNING_KEY_FILE_NAME)
    log_vkey = LogCheckpoints(ORIGIN, note.KeySigner(key)).vkey.text()
    witnesses, processes = [], []
    try:
        for i in range(args.witnesses):
            vkey = init_state(directory / f"witness-{i}", f"bench.witness.example/w{i}").text()
            process, url = start_witness(directory / f"witness-{i}", log_vkey)
            processes.append(process)
            witnesses.append(f"bench.witness.example/w{i}={vkey}@{url}")
        measure(directory, certs, witnesses, args.heads, args.pause_s)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)


def measure(directory: pathlib.Path, certs: pathlib.Path, witnesses: list[str], heads: int, pause_s: float) -> None:
    server = build_server(ServerConfig(listen="127.0.0.1:0", data_dir=str(directory), certs_dir=str(certs),
                                       create_store=True, metrics_listen=None, log_origin=ORIGIN,
                                       witnesses=tuple(witnesses), witness_quorum=len(witnesses))).start()
    try:
        address = f"127.0.0.1:{server.port}"
        alice = ledger_stub(address, certs, "alice")
        audit = audit_pb2_grpc.AuditServiceStub(secure_channel(address, certs, "dave"))
        samples_s = []
        for i in range(heads):
            time.sleep(pause_s)
            alice.OpenAccount(pb.OpenAccountRequest(request_id=f"open-{i}", account_id=f"bench-{i}",
                                                    kind=pb.ACCOUNT_KIND_COLD, custodian="Bench", wallet_label="w",
                                                    quorum=pb.Quorum(required=1, total=1)), timeout=30)
            signed_s = time.perf_counter()  # the command's commit signed the head of i + 1 events
            samples_s.append(wait_for_quorum(audit, i + 1, len(witnesses)) - signed_s)
    finally:
        server.stop()
    samples_s.sort()
    print(f"witnesses: {len(witnesses)} (separate processes, loopback HTTP), quorum {len(witnesses)}, heads: {heads}, "
          f"pause before each: {pause_s:g} s")
    print(f"new head -> quorum of cosignatures: p50 {statistics.median(samples_s) * 1000:.0f} ms, "
          f"p95 {samples_s[max(0, int(len(samples_s) * 0.95) - 1)] * 1000:.0f} ms, "
          f"max {samples_s[-1] * 1000:.0f} ms")


def wait_for_quorum(audit, size: int, quorum: int) -> float:
    deadline = time.perf_counter() + WAIT_S
    while time.perf_counter() < deadline:
        answer = audit.GetCheckpoint(apb.GetCheckpointRequest(tree_size=size), timeout=30)
        if len(answer.cosignatures) >= quorum:
            return time.perf_counter()
        time.sleep(0.01)
    raise SystemExit(f"no quorum for the head of {size} events within {WAIT_S} s")


if __name__ == "__main__":
    main()
