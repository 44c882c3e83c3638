"""Proof of reserves over many derived addresses: reconciliation and control proofs, timed.

    python benchmarks/bench_reserves.py --addresses 10000 [--backend embedded|core|esplora] [--data-dir DIR]

One custody account holds a ranged 2-of-3 wsh(sortedmulti) descriptor with a gap limit of addresses / 2 on its
receive and change branches (so the scan derives `--addresses` scripts); `--funded` of them hold a coin. Times:
derivation alone, the whole reconciliation (derive + look up every script on the backend), and the BIP-322
control proof of every funded script (2-of-3 signatures run by libbitcoinkernel).
"""

import argparse
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from ledger import bip322  # noqa: E402
from ledger.audit import Findings  # noqa: E402
from services.audit.chain import reconcile_reserves  # noqa: E402
from services.bitcoin.core_rpc import CoreRpcClient  # noqa: E402
from services.bitcoin.esplora import EsploraClient  # noqa: E402
from services.bitcoin.regtest.chain import RegtestChain  # noqa: E402
from services.bitcoin.regtest.node import RegtestNode  # noqa: E402
from services.reserves.control import prove_control  # noqa: E402
from services.reserves.descriptors import account_scripts, clear_derivation_cache, expand  # noqa: E402
from services.reserves.dev_signer import DevKeys, dev_multisig, sign_script  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addresses", type=int, default=10_000, help="derived scripts to scan (even)")
    parser.add_argument("--funded", type=int, default=20, help="how many of them hold a coin")
    parser.add_argument("--backend", choices=("embedded", "core", "esplora"), default="embedded")
    parser.add_argument("--data-dir", help="where the regtest chain goes (default: a temporary directory)")
    args = parser.parse_args()
    directory = pathlib.Path(args.data_dir or tempfile.mkdtemp(prefix="bench-reserves-"))
    descriptor, keys = dev_multisig(["bench-1", "bench-2", "bench-3"], 2)
    gap_limit = args.addresses // 2
    clear_derivation_cache()
    started, started_cpu = time.perf_counter(), time.process_time()
    scripts = account_scripts({"addresses": [], "descriptor": descriptor, "gap_limit": gap_limit})
    derive_s, derive_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
    print(f"derivation: {len(scripts):,} scripts of a 2-of-3 multisig in {derive_s:.2f} s wall, {derive_cpu_s:.2f} s "
          f"CPU ({len(scripts) / derive_cpu_s:,.0f} scripts per CPU second)")
    with RegtestChain.create(directory / "chain") as chain:
        funded = _fund(chain, descriptor, gap_limit, args.funded)
        account = {"account_id": "vault-bench", "custodian": "C", "addresses": [], "descriptor": descriptor,
                   "gap_limit": gap_limit, "balance_sats": sum(sats for *_, sats in funded), "status": "open"}
        with RegtestNode(chain) as node:
            backend = {"embedded": chain, "core": CoreRpcClient(node.rpc_url, cookie_file=str(node.cookie_file)),
                       "esplora": EsploraClient(node.esplora_url)}[args.backend]
            clear_derivation_cache()     # a cold scan: derive every script again
            started, started_cpu = time.perf_counter(), time.process_time()
            findings = Findings()
            result = reconcile_reserves([account], backend, findings)
            reconcile_s, reconcile_cpu_s = time.perf_counter() - started, time.process_time() - started_cpu
        row = result["accounts"][0]
        print(f"reconciliation ({args.backend}): {row['scripts_scanned']:,} scripts scanned, {row['funded_scripts']} "
              f"funded, status {row['status']}, in {reconcile_s:.2f} s wall, {reconcile_cpu_s:.2f} s CPU of this "
              "process (the HTTP backends' servers run in it too)")
        _control(descriptor, keys, funded, result["height"])
    return 0 if row["status"] == "match" and not findings.total else 1


def _fund(chain, descriptor: str, gap_limit: int, count: int) -> list[tuple[int, int, int]]:
    """`count` coins spread over both branches, within each branch's first window so the scan finds them."""
    expanded = expand(descriptor)
    funded = [(i % 2, (i * 7) % gap_limit, 10_000 + i) for i in range(count)]
    for branch, index, sats in funded:
        chain.send(expanded.scripts(branch, [index])[0].script_pubkey, sats)
    chain.mine(1)
    return funded


def _control(descriptor: str, keys, funded, height: int) -> None:
    expanded = expand(descriptor)
    challenge = {"nonce": "00" * 32, "tree_size": 1, "root_hash": "00" * 32, "height": height,
                 "block_hash": "00" * 32, "accounts": [{"account_id": "vault-bench", "funded_scripts": [
                     {"script_pubkey": expanded.scripts(b, [i])[0].script_pubkey.hex(), "source": "", "sats": sats}
                     for b, i, sats in funded]}]}
    message = bip322.challenge_message(challenge, "vault-bench")
    signatures = {s["script_pubkey"]: sign_script(bytes.fromhex(s["script_pubkey"]), b, i, descriptor, message,
                                                  DevKeys([], keys))
                  for s, (b, i, _) in zip(challenge["accounts"][0]["funded_scripts"], funded)}
    started = time.perf_counter()
    report = prove_control(challenge, {"vault-bench": signatures})
    elapsed_s = time.perf_counter() - started
    print(f"control proofs: {len(funded)} BIP-322 2-of-3 signatures verified by libbitcoinkernel in {elapsed_s:.3f} s;"
          f" proven {report['proven_sats']:,} of {report['funded_sats']:,} sats")


if __name__ == "__main__":
    sys.exit(main())
