"""The event store's mapper: a stored event's state IS the event's canonical bytes (docs/FORMATS.md §1).

Installed through eventsourcing's public extension point MAPPER_TOPIC (services/store/config.py). The
library's default mapper would transcode the event's attributes to its own JSON (with `_type_`/`_data_`
encodings); this one writes the bytes the ledger decided, unchanged, so what is stored, hashed into the
Merkle log and signed is one byte string, whatever the library's encoding becomes.
"""

from typing import Any

from eventsourcing.persistence import Mapper, StoredEvent
from eventsourcing.utils import get_topic

from ledger.events import LoggedEvent

LOGGED_EVENT_TOPIC = get_topic(LoggedEvent)


class CanonicalBytesMapper(Mapper):
    """LoggedEvent <-> StoredEvent with state = canonical bytes; no transcoder, compressor or cipher applies."""

    def __init__(self, transcoder: Any = None, compressor: Any = None, cipher: Any = None):
        if compressor is not None or cipher is not None:
            raise ValueError("canonical bytes are stored as decided: configure no COMPRESSOR_TOPIC or CIPHER_KEY")
        super().__init__(transcoder)

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        if not isinstance(domain_event, LoggedEvent):
            raise TypeError(f"only ledger LoggedEvents are stored, not {type(domain_event).__name__}")
        return StoredEvent(originator_id=domain_event.originator_id,
                           originator_version=domain_event.originator_version,
                           topic=LOGGED_EVENT_TOPIC, state=domain_event.canonical_bytes)

    def to_domain_event(self, stored_event: StoredEvent) -> LoggedEvent:
        if stored_event.topic != LOGGED_EVENT_TOPIC:
            raise ValueError(f"event version {stored_event.originator_version} has topic {stored_event.topic!r}, "
                             "not a canonical event (a data directory of an older format?)")
        return LoggedEvent(stored_event.originator_id, stored_event.originator_version, bytes(stored_event.state))
