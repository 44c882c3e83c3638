"""`reserve-ledger witness init|serve|show`: a C2SP tlog-witness another agency can run (services/witness/).

Every argument is checked before anything is created or bound; a mistake is one line and exit 2.
"""

import datetime
import json
import pathlib
import signal
import threading
import time

from services.compose import listen_address
from services.errors import AlreadyExists, ConfigurationInvalid, NothingStoredHere

STOP_POLL_S = 0.5


def add_witness_commands(subparsers) -> None:
    from services.cli.errors import OneLineArgumentParser
    witness = subparsers.add_parser("witness", help="a transparency-log witness that cosigns checkpoints "
                                                    "(C2SP tlog-witness, docs/FORMATS.md §8)")
    commands = witness.add_subparsers(dest="witness_command", required=True, parser_class=OneLineArgumentParser)
    init = commands.add_parser("init", help="create the witness's state directory and Ed25519 key; prints its vkey")
    init.add_argument("--state", required=True, metavar="DIR", help="a new or empty directory (made mode 0700)")
    init.add_argument("--name", required=True, help="the witness's key name, a schema-less URL such as "
                                                    "witness.agency.example/w1")
    init.set_defaults(run=cmd_witness_init)
    serve = commands.add_parser("serve", help="answer POST /add-checkpoint until SIGTERM")
    serve.add_argument("--state", required=True, metavar="DIR", help="the directory `witness init` made")
    serve.add_argument("--listen", default="127.0.0.1:7380", metavar="HOST:PORT",
                       help="address to listen on (default 127.0.0.1:7380; port 0: any free port)")
    serve.add_argument("--log", action="append", required=True, metavar="ORIGIN=VKEY",
                       help="a log to witness: its origin line and its vkey (`reserve-ledger checkpoint --vkey`); "
                            "repeatable")
    serve.set_defaults(run=cmd_witness_serve)
    show = commands.add_parser("show", help="print the witness's vkey, what it cosigned last and the refused "
                                            "checkpoints it keeps as evidence (JSON)")
    show.add_argument("--state", required=True, metavar="DIR")
    show.set_defaults(run=cmd_witness_show)


def parse_logs(values: list[str]) -> dict:
    from services.witness import note
    logs = {}
    for value in values:
        origin, sep, vkey = value.partition("=")
        try:
            key = note.parse_vkey(vkey) if sep and origin else None
        except note.NoteInvalid as invalid:
            raise ConfigurationInvalid(f"--log {value[:80]!r}: {invalid}") from None
        if key is None or key.alg != note.ALG_ED25519:
            raise ConfigurationInvalid(f"--log {value[:80]!r}: expected ORIGIN=VKEY with a log's Ed25519 vkey "
                                       "(NAME+KEYID+BASE64, as `reserve-ledger checkpoint --vkey` prints it)")
        if origin in logs:
            raise ConfigurationInvalid(f"--log: origin {origin!r} is given twice")
        logs[origin] = key
    return logs


def _state_dir(text: str, *, existing: bool) -> pathlib.Path:
    from services.witness.witness import KEY_FILE_NAME
    directory = pathlib.Path(text)
    if existing and not (directory / KEY_FILE_NAME).is_file():
        raise NothingStoredHere(f"--state {directory}: no witness here ({KEY_FILE_NAME} is missing); create one with "
                                "`reserve-ledger witness init --state DIR --name NAME`")
    if not existing and directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise AlreadyExists(f"--state {directory}: not a new or empty directory (a witness key is never replaced)")
    return directory


def cmd_witness_init(args) -> int:
    from services.witness import note
    from services.witness.witness import init_state
    directory = _state_dir(args.state, existing=False)
    try:
        note.check_key_name(args.name)
    except note.NoteInvalid as invalid:
        raise ConfigurationInvalid(f"--name: {invalid}") from None
    vkey = init_state(directory, args.name)
    print(vkey.text(), flush=True)
    return 0


def cmd_witness_serve(args) -> int:
    from services.witness.http import WitnessHTTPServer
    from services.witness.witness import Witness
    logs = parse_logs(args.log)
    host, port = listen_address(args.listen)
    directory = _state_dir(args.state, existing=True)
    witness = Witness(directory, logs, lambda: int(time.time()))
    try:
        server = WitnessHTTPServer((host, port), witness, list(logs))
    except OSError as error:
        witness.close()
        raise ConfigurationInvalid(f"cannot listen on {args.listen}: {error.strerror}; choose another --listen") \
            from None
    stopping = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stopping.set())
    server.serve_in_thread()
    shown_host = f"[{host}]" if ":" in host else host or "0.0.0.0"
    print(f"witness {witness.vkey.text()}\nlistening on http://{shown_host}:{server.port}", flush=True)
    try:
        while not stopping.wait(STOP_POLL_S):  # runs until SIGTERM or Ctrl-C
            pass
    finally:
        server.shutdown()
        server.server_close()
        witness.close()
    print("witness stopped", flush=True)
    return 0


def cmd_witness_show(args) -> int:
    from services.witness.witness import Witness
    directory = _state_dir(args.state, existing=True)
    witness = Witness(directory, {}, lambda: int(time.time()))
    try:
        refused = [{**row, "request": row["request"].decode("utf-8", "replace"),
                    "received": datetime.datetime.fromtimestamp(row["received_s"], datetime.UTC).isoformat()}
                   for row in witness.refused()]
        cosigned = witness.cosigned_all()
    finally:
        witness.close()
    print(json.dumps({"vkey": witness.vkey.text(), "cosigned": cosigned, "refused": refused}, indent=1))
    return 0


def add_checkpoint_command(subparsers) -> None:
    from services.cli.options import add_storage_options
    checkpoint = subparsers.add_parser("checkpoint", help="print the latest signed tree head as a C2SP checkpoint "
                                                          "note with its witnesses' cosignatures, or the log's vkey")
    add_storage_options(checkpoint)
    checkpoint.add_argument("--signing-key", metavar="FILE", help="the tree-head key that signs the checkpoint "
                            "(default DATA_DIR/tree-head-signing.key; required with --database)")
    checkpoint.add_argument("--log-origin", metavar="ORIGIN", help="the origin serve uses (default "
                            "reserve-ledger.local/ + 16 hex digits of the key's SHA-256)")
    checkpoint.add_argument("--tree-size", type=int, default=0, metavar="N",
                            help="a stored head of N events (default: the latest)")
    checkpoint.add_argument("--vkey", action="store_true", help="print the log's verifier key (vkey) instead, "
                            "for witnesses' --log ORIGIN=VKEY and other signed-note tools")
    checkpoint.set_defaults(run=cmd_checkpoint)


def cmd_checkpoint(args) -> int:
    from services import compose
    from services.cli.options import storage_from
    storage = storage_from(args)
    if args.tree_size < 0:
        raise ConfigurationInvalid("--tree-size must be 0 (the latest) or more")
    compose.check_store_exists(storage)
    checkpoints = compose.log_checkpoints(compose.signing_key_path(storage, args.signing_key), args.log_origin)
    if args.vkey:
        print(checkpoints.vkey.text())
        return 0
    ledger = compose.open_ledger(storage)
    try:
        head = ledger.store.load_tree_head(args.tree_size or None)
        if head is None:
            raise NothingStoredHere("no tree head is signed " + (f"at size {args.tree_size}" if args.tree_size
                                                                  else "yet (the log is empty)"))
        signed, _ = checkpoints.with_cosignatures(head, ledger.store)
    finally:
        ledger.close()
    print(signed.encode().decode(), end="")
    return 0
