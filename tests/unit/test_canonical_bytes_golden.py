"""The bytes the ledger signs do not change when the way events are stored changes.

The golden values were produced by `tests/generate_random_log.py` and the contract scenario on commit
e79fafc3babf258ad24a18f5b679c1de591a3775, where canonical bytes were still derived by parsing the row that
eventsourcing's default JSON transcoder wrote. Reproduce them there with
    python tests/generate_random_log.py --events 2000      (and --events 100000)
Every later storage change must regenerate identical values.
"""

import json
import pathlib
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from eventsourcing.persistence import (DatetimeAsISO, DecimalAsStr, JSONTranscoder,
                                       UUIDAsHex)

from ledger import merkle
from tests.contract.scenario import drive
from tests.generate_random_log import digests, run, sqlite_ledger

# (events, seed) -> (Merkle root, SHA-256 over the length-prefixed canonical bytes), both hex.
GOLDEN = {
    (2000, 1): ("f496d59272168743d2c414df17d989637c7a2c725981b729704e233aaebed713",
                "212bc3c054eef73017626c5d5fc99874b46148c1b75d221230fe4334095fac86"),
    (100_000, 1): ("f33b95b4d89324a3f26b8fc0c6b16e5b2b26b66230f9a370e68bf0aecce95ff5",
                   "f3db1f58c1918e75689150575909b177d85759eb5c22f6dce8942ac9209a5406"),
}
SCENARIO_ROUNDS = 3
SCENARIO_GOLDEN = (33, "759f66c41af8fada0633f02934bfc81f1d7b810dcde9228ee0ee29a4a1a2aba8",
                   "43854e1f966fe4d1d7ec4252acbb1666fb7110a3276fa9b51557ba252635b2c1")


@pytest.mark.parametrize(("events", "seed"), sorted(GOLDEN), ids=lambda v: str(v))
def test_a_seeded_random_log_has_the_golden_root_and_bytes(events, seed, tmp_path):
    """100,000 events take about 45 s on SQLite; the 2,000-event log says the same thing in a second."""
    assert run(events, seed, tmp_path) == GOLDEN[(events, seed)]


# --- the "before": canonical bytes as they were derived from eventsourcing's stored row ------------

def _old_transcoder() -> JSONTranscoder:
    """The transcoder eventsourcing's Application installed by default (Application.register_transcodings)."""
    transcoder = JSONTranscoder()
    for transcoding in (UUIDAsHex(), DecimalAsStr(), DatetimeAsISO()):
        transcoder.register(transcoding)
    return transcoder


def _old_row_state(event: dict, transcoder: JSONTranscoder) -> bytes:
    """The `state` column the default Mapper wrote for the old event class (its vars but the id and version)."""
    time_us = event["time_us"]
    timestamp = datetime.fromtimestamp(time_us // 1_000_000, tz=timezone.utc).replace(microsecond=time_us % 1_000_000)
    metadata = {k: event[k] for k in ("request_id", "request_digest", "actor", "actor_role")}
    return transcoder.encode({"timestamp": timestamp, **metadata, **event["data"]})


def _old_canonical_bytes(originator_version: int, event_type: str, state: bytes) -> bytes:
    """The old row-parsing path: the stored JSON, its `_type_`/`_data_` timestamp, re-serialised canonically."""
    fields = orjson.loads(state)
    stamp = fields.pop("timestamp")
    assert stamp["_type_"] == "datetime_iso", stamp
    time_us = (datetime.fromisoformat(stamp["_data_"]) - datetime(1970, 1, 1, tzinfo=timezone.utc)) \
        // timedelta(microseconds=1)
    event = {"format_version": 1, "position": originator_version - 1, "type": event_type, "time_us": time_us,
             **{k: fields.pop(k) for k in ("request_id", "request_digest", "actor", "actor_role")}, "data": fields}
    return json.dumps(event, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def test_every_stored_event_has_the_bytes_the_old_row_parsing_gave(tmp_path: pathlib.Path):
    """The contract scenario: each stored event's bytes equal what the old definition yields for the same
    decided event, and the stored Merkle root equals the one recorded before the change."""
    ledger = sqlite_ledger(tmp_path)
    try:
        drive(ledger, rounds=SCENARIO_ROUNDS)
        size = ledger.store.log_size()
        transcoder = _old_transcoder()
        stored = [data for _, data in ledger.read_events(0, size)]
        old = []
        for position, (event, data) in enumerate(ledger.read_events(0, size)):
            assert event["position"] == position
            old.append(_old_canonical_bytes(position + 1, event["type"], _old_row_state(event, transcoder)))
        assert stored == old
        assert merkle.root_from_leaves([merkle.leaf_hash(b) for b in old]) == merkle.root_hash(ledger.store, size)
        assert (size, *digests(ledger, size)) == SCENARIO_GOLDEN
    finally:
        ledger.close()
