"""AlertService: the reserves monitor's alerts (ReserveDiscrepancyObserved and what resolved them), read from the
projection (ListAlerts) or followed in the log (StreamAlerts, built like StreamEvents). No business rules here."""

from ledger import errors, limits
from ledger import monitor
from ledger.application import ReserveLedger
from reserve_ledger.v1 import alerts_pb2 as pb
from reserve_ledger.v1 import alerts_pb2_grpc
from services.api.ledger_servicer import STREAM_HEARTBEAT_S, STREAM_RETRY_S, page_size_of, timestamp_of
from services.api.paging import offset_of, token_of, within_bytes

STATUS_TO_PROTO = {monitor.OPEN: pb.ALERT_STATUS_OPEN, monitor.CLOSED: pb.ALERT_STATUS_CLOSED,
                   monitor.REORGED_OUT: pb.ALERT_STATUS_REORGED_OUT}
PROTO_TO_STATUS = {number: status for status, number in STATUS_TO_PROTO.items()}
OBSERVED, REORGED_OUT = "ReserveDiscrepancyObserved", "ReserveDiscrepancyReorgedOut"
CLOSING_FIELD = "closes_discrepancy_ids"


def alert_to_proto(d: monitor.Discrepancy) -> pb.Alert:
    return pb.Alert(discrepancy_id=d.discrepancy_id, account_id=d.account_id, block_height=d.block_height,
                    block_hash=d.block_hash, txids=d.txids, movement_sats=d.movement_sats, onchain_sats=d.onchain_sats,
                    ledger_sats=d.ledger_sats, finding=d.finding, status=STATUS_TO_PROTO[d.status],
                    position=d.position, resolved_position=d.resolved_position, record_time=timestamp_of(d.time_us))


def alert_event_of(event: dict) -> pb.AlertEvent | None:
    """The AlertEvent an event makes, or None for an event that touches no alert."""
    data, kind = event["data"], event["type"]
    common = {"position": event["position"], "event_type": kind, "record_time": timestamp_of(event["time_us"])}
    if kind == OBSERVED:
        alert = monitor.Discrepancy(**{**{k: data[k] for k in ("discrepancy_id", "account_id", "block_height",
                                                              "block_hash", "movement_sats", "onchain_sats",
                                                              "ledger_sats", "finding")},
                                       "txids": tuple(data["txids"]), "position": event["position"],
                                       "time_us": event["time_us"]})
        return pb.AlertEvent(**common, discrepancy_ids=[data["discrepancy_id"]], alert=alert_to_proto(alert))
    if kind == REORGED_OUT:
        return pb.AlertEvent(**common, discrepancy_ids=[data["discrepancy_id"]])
    if CLOSING_FIELD in data:
        return pb.AlertEvent(**common, discrepancy_ids=data[CLOSING_FIELD])
    return None


class AlertServicer(alerts_pb2_grpc.AlertServiceServicer):
    def __init__(self, ledger: ReserveLedger, tail):
        self._ledger = ledger
        self._tail = tail  # the log's size, awaited by StreamAlerts (services/api/tail.py LogTail)

    def ListAlerts(self, request, context):
        size = page_size_of(request.page_size)
        offset = offset_of(request.page_token, "alerts")
        if request.status and request.status not in PROTO_TO_STATUS:
            raise errors.RequestInvalid([errors.Violation("status", "ALERT_STATUS_UNKNOWN",
                                                          "status must be one of the AlertStatus values")])
        wanted = PROTO_TO_STATUS.get(request.status)
        with self._ledger.reading() as state:
            rows = [d for d in state.discrepancies.values() if wanted is None or d.status == wanted]
            page = within_bytes([alert_to_proto(d) for d in rows[offset:offset + size]])
            open_total, position = len(monitor.open_discrepancies(state)), state.position
        more = offset + len(page) < len(rows)
        return pb.ListAlertsResponse(alerts=page, next_page_token=token_of("alerts", offset + len(page)) if more else "",
                                     position=position, open_total=open_total)

    def _alert_events(self, start: int, limit: int) -> tuple[list[pb.AlertEvent], int]:
        """The alert events among the next `limit` log events from `start`, and the position after those read."""
        read = self._ledger.read_events(start, limit)
        found = [alert for event, _ in read if (alert := alert_event_of(event)) is not None]
        sent = within_bytes(found)
        return sent, start + len(read) if len(sent) == len(found) else sent[-1].position + 1

    async def StreamAlerts(self, request, context):
        """A follow stream built like StreamEvents (services/api/calls.py): each read runs in the executor; while
        the log holds nothing new it awaits the tail, holding no thread, and sends a heartbeat now and then."""
        size = page_size_of(request.batch_size, "batch_size") if request.batch_size else limits.STREAM_BATCH_DEFAULT
        if request.start_position < 0:
            raise errors.RequestInvalid([errors.Violation("start_position", "POSITION_INVALID",
                                                          "start_position must not be negative")])
        batch_size = min(size, limits.STREAM_BATCH_MAX)
        async for events, position in self._tail.follow(request.start_position,
                                                         lambda start: self._alert_events(start, batch_size),
                                                         STREAM_HEARTBEAT_S, STREAM_RETRY_S):
            yield pb.StreamAlertsResponse(events=events, next_position=position)
