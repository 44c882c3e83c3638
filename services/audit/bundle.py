"""The audit bundle on disk (docs/FORMATS.md, "Audit bundle"): writing its files, reading them back, auditing.

This module uses no storage code (no SQL, no eventsourcing, no ReserveLedger): the exporter
(services/audit/export.py) hands it bytes and dicts; `reserve-ledger audit` reads a bundle with nothing else
than these files and the pure checks of ledger/audit.py.
"""

import hashlib
import json
import pathlib
import struct
from typing import Callable, Iterator

from ledger import audit
from ledger.anchoring import Outpoint, OutpointInvalid, outpoint_of_json

MANIFEST = "manifest.json"
EVENTS = "events.bin"
TREE_HEADS = "tree_heads.json"
PUBLIC_KEY = "public_key.hex"
ANCHORS = "anchors.json"
HEADERS = "headers.json"
CUSTODY = "custody.json"
ANCHOR_GENESIS = "anchor_genesis.json"
REQUIRED_FILES = (EVENTS, TREE_HEADS, PUBLIC_KEY, ANCHORS, CUSTODY, ANCHOR_GENESIS)
FRAME_HEADER = struct.Struct(">I")   # every event: 4-byte big-endian length, then its canonical bytes
READ_BUFFER_BYTES = 1 << 20
JSON_FILE_SIZE_MAX_BYTES = 512 << 20


class BundleInvalid(ValueError):
    """A bundle that cannot be read at all (a missing or unparseable file, a broken frame)."""


# --- writing ---------------------------------------------------------------------------------------------

def json_bytes(value) -> bytes:
    """Deterministic JSON (sorted keys, one item per line): two exports of one log are byte-identical."""
    return (json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def write_json(directory: pathlib.Path, name: str, value) -> None:
    (directory / name).write_bytes(json_bytes(value))


class EventsWriter:
    """Appends framed events to events.bin."""

    def __init__(self, directory: pathlib.Path):
        self._file = open(directory / EVENTS, "wb")
        self.count = 0

    def write(self, event_bytes: bytes) -> None:
        self._file.write(FRAME_HEADER.pack(len(event_bytes)))
        self._file.write(event_bytes)
        self.count += 1

    def close(self) -> None:
        self._file.close()


def file_sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(READ_BUFFER_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_digests(directory: pathlib.Path) -> dict[str, str]:
    """SHA-256 of every file of the bundle but the manifest."""
    return {path.name: file_sha256(path) for path in sorted(directory.iterdir())
            if path.is_file() and path.name != MANIFEST}


def seal(directory: pathlib.Path, counts: dict[str, int]) -> dict:
    """Write manifest.json: the format id, the counts and the SHA-256 of every other file."""
    files = {name: {"sha256": digest, "size_bytes": (directory / name).stat().st_size}
             for name, digest in bundle_digests(directory).items()}
    manifest = {"format": audit.BUNDLE_FORMAT, "counts": dict(sorted(counts.items())), "files": files,
                "framing": "events.bin: for each event in log order, its length as 4 bytes big-endian, then its "
                           "canonical bytes"}
    write_json(directory, MANIFEST, manifest)
    return manifest


# --- reading ---------------------------------------------------------------------------------------------

def read_json(directory: pathlib.Path, name: str, default=None):
    path = directory / name
    if not path.exists():
        if default is not None:
            return default
        raise BundleInvalid(f"{name} is missing")
    if path.stat().st_size > JSON_FILE_SIZE_MAX_BYTES:
        raise BundleInvalid(f"{name} is larger than {JSON_FILE_SIZE_MAX_BYTES} bytes")
    try:
        return json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as error:
        raise BundleInvalid(f"{name} is not JSON ({error})") from None


def iter_events(path: pathlib.Path) -> Iterator[bytes]:
    """Every framed event of events.bin; BundleInvalid (naming the event) at a broken frame."""
    with open(path, "rb", buffering=READ_BUFFER_BYTES) as file:
        index = 0
        while header := file.read(FRAME_HEADER.size):
            if len(header) < FRAME_HEADER.size:
                raise BundleInvalid(f"event {index}: events.bin ends inside a length prefix")
            (length,) = FRAME_HEADER.unpack(header)
            if length > audit.EVENT_SIZE_MAX_BYTES:
                raise BundleInvalid(f"event {index}: length prefix {length} exceeds {audit.EVENT_SIZE_MAX_BYTES}")
            body = file.read(length)
            if len(body) < length:
                raise BundleInvalid(f"event {index}: events.bin ends {length - len(body)} bytes short")
            yield body
            index += 1


def read_small_files(directory: pathlib.Path) -> dict:
    """Everything but events.bin, parsed (headers.json is optional)."""
    for name in (MANIFEST, *REQUIRED_FILES):
        if not (directory / name).is_file():
            raise BundleInvalid(f"{directory}: {name} is missing; not an audit bundle")
    manifest = read_json(directory, MANIFEST)
    if not isinstance(manifest, dict) or not isinstance(manifest.get("counts", {}), dict):
        raise BundleInvalid(f"{MANIFEST} is not an object with a counts object")
    return {"manifest": manifest, "tree_heads": read_json(directory, TREE_HEADS),
            "public_key_hex": (directory / PUBLIC_KEY).read_text(errors="replace"),
            "anchors": read_json(directory, ANCHORS), "custody": read_json(directory, CUSTODY),
            "anchor_genesis": read_json(directory, ANCHOR_GENESIS),
            "headers": read_json(directory, HEADERS, default={}) if (directory / HEADERS).exists() else None}


# --- auditing --------------------------------------------------------------------------------------------

def audit_bundle(directory: str | pathlib.Path, progress: Callable[[int], None] = lambda n: None) -> dict:
    """Run every offline check of ledger/audit.py over the bundle; returns the facts and findings.

    ``progress(events_done)`` is called every few thousand events.
    """
    directory = pathlib.Path(directory)
    files = read_small_files(directory)
    expected = files["manifest"].get("counts", {}).get("events", 0)
    genesis, genesis_error = anchor_genesis_of(files["anchor_genesis"])
    run = audit.Audit(_as_list(files["tree_heads"]), files["public_key_hex"], _as_list(files["anchors"]),
                      expected if isinstance(expected, int) else 0, anchor_genesis=genesis)
    if genesis_error:
        run.findings.add("anchors", f"file {ANCHOR_GENESIS}", genesis_error)
    _feed_events(run, directory / EVENTS, progress)
    facts = run.finish()
    facts["anchor_genesis"] = None if genesis is None else str(genesis)
    headers = files["headers"] if isinstance(files["headers"], dict) or files["headers"] is None else {}
    listed_headers = _as_list((headers or {}).get("headers"))
    if headers is not None:
        # The exporter writes start_height null (and no headers) when no anchor is confirmed yet.
        start = headers.get("start_height")
        if listed_headers and (not isinstance(start, int) or isinstance(start, bool)):
            run.findings.add("headers", "file headers.json", f"start_height {start!r} is not a block height")
        hashes = audit.check_headers(start if isinstance(start, int) else 0, listed_headers, run.findings)
        audit.check_anchor_blocks_in_headers(facts["anchors"], hashes, run.findings)
        facts["headers"] = {"start_height": start, "count": len(hashes)}
    views = run.views()
    if views["replay_stopped_at"] is None:
        audit.check_custody(_as_list(files["custody"]), views["accounts"], run.findings)
    counts = {"events": facts["events"], "tree_heads": len(_as_list(files["tree_heads"])),
              "anchors": len(_as_list(files["anchors"])), "custody_accounts": len(_as_list(files["custody"])),
              "headers": len(listed_headers)}
    audit.check_manifest(files["manifest"], bundle_digests(directory), counts, run.findings)
    return {**facts, **views, "holdings_over_time": run.samples, "controls": run.controls.to_dict(),
            "counts": counts, "findings": run.findings}


def anchor_genesis_of(value) -> tuple[Outpoint | None, str]:
    """anchor_genesis.json's outpoint (None when it says null) and what is wrong with it ("" when nothing)."""
    try:
        return outpoint_of_json(value), ""
    except OutpointInvalid as error:
        return None, str(error)


def _feed_events(run: audit.Audit, path: pathlib.Path, progress: Callable[[int], None]) -> None:
    count = 0
    try:
        for event_bytes in iter_events(path):
            run.feed(event_bytes)
            count += 1
            if count % 5000 == 0:
                progress(count)
    except BundleInvalid as error:
        run.findings.add("events", str(error).partition(":")[0], str(error).partition(": ")[2])
    progress(count)


def _as_list(value) -> list:
    return value if isinstance(value, list) else []
