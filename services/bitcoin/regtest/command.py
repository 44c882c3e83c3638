"""The `reserve-ledger regtest-node` command: serve an embedded regtest chain until SIGTERM or Ctrl-C.

Every argument is checked before anything is bound or written (ConfigurationInvalid, one line and exit 2
through the CLI's error table); a DIR without a chain is refused unless `--create` is given.
"""

import pathlib
import signal
import threading

from services.errors import ConfigurationInvalid

STOP_POLL_S = 0.5


def add_regtest_node_command(subparsers) -> None:
    parser = subparsers.add_parser(
        "regtest-node", help="serve the embedded regtest chain over a Bitcoin Core JSON-RPC subset and an "
                             "Esplora REST subset (loopback only; docs/REGTEST.md)")
    parser.add_argument("--dir", required=True, help="the chain directory (must hold a chain unless --create)")
    parser.add_argument("--create", action="store_true",
                        help="create the chain with 200 blocks when DIR does not hold one")
    parser.add_argument("--host", default="127.0.0.1", help="a loopback address (default 127.0.0.1)")
    parser.add_argument("--rpc-port", type=int, default=0, help="JSON-RPC port (default: any free port)")
    parser.add_argument("--esplora-port", type=int, default=0, help="Esplora REST port (default: any free port)")
    parser.add_argument("--rpc-user", help="accept this user as well as the cookie DIR/.cookie")
    parser.add_argument("--rpc-password", help="the --rpc-user's password")
    parser.set_defaults(run=cmd_regtest_node)


def check_arguments(args) -> None:
    """Everything that can be checked without binding a port or touching DIR."""
    from services.bitcoin.regtest.http import check_port, loopback_host
    from services.bitcoin.regtest.node import check_rpc_login
    loopback_host(args.host)
    check_port(args.rpc_port, "--rpc-port")
    check_port(args.esplora_port, "--esplora-port")
    check_rpc_login(args.rpc_user, args.rpc_password)
    directory = pathlib.Path(args.dir)
    if directory.exists() and not directory.is_dir():
        raise ConfigurationInvalid(f"--dir {directory}: is a file, not a regtest chain directory")


def cmd_regtest_node(args) -> int:
    check_arguments(args)
    from services.bitcoin.regtest.chain import RegtestChain, holds_chain
    from services.bitcoin.regtest.node import RegtestNode, bind_servers
    servers = bind_servers(args.host, args.rpc_port, args.esplora_port)
    try:
        create = args.create and not holds_chain(args.dir)
        chain = RegtestChain.create(args.dir) if create else RegtestChain.open(args.dir)
    except BaseException:
        for server in servers:
            server.server_close()
        raise
    stopping = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stopping.set())
    with chain:
        node = RegtestNode(chain, host=args.host, rpc_user=args.rpc_user, rpc_password=args.rpc_password)
        node.start(servers)
        try:
            print(f"rpc: {node.rpc_url}\nesplora: {node.esplora_url}\ncookie: {node.cookie_file}\n"
                  f"tip height: {chain.tip_height()}{' (created)' if create else ''}", flush=True)
            while not stopping.wait(STOP_POLL_S):  # runs until SIGTERM or Ctrl-C
                pass
        finally:
            node.stop()
    print("regtest node stopped", flush=True)
    return 0
