"""The ledger gathers witnesses' cosignatures: one supervised worker per witness (services/api/workers.py).

Heads are signed per commit; each worker looks for a new latest head every POLL_INTERVAL_S and sends it at
most once per SEND_GAP_S (a burst of commits costs one request a second; the first head after a quiet spell
goes out at once), with the consistency proof from the size that witness last cosigned. A 409 names the
witness's size: the worker adopts it and retries once with the proof from there. A witness that is down or
refuses makes its own worker fail and back off (health `reserve_ledger.worker.witness-NAME`); commands never
wait for witnesses. A cosignature is checked against the witness's configured key before it is stored.
"""

import dataclasses
import logging
import time
import urllib.error
import urllib.request
from typing import Callable

from ledger import limits, merkle
from ledger.tree_heads import TreeHead
from services.errors import ConfigurationInvalid
from services.witness import note
from services.witness.log import LogCheckpoints
from services.witness.witness import format_add_checkpoint

log = logging.getLogger("reserve_ledger.witness")

POLL_INTERVAL_S = 0.25
SEND_GAP_S = 1.0
HTTP_TIMEOUT_S = 10.0
RESPONSE_SIZE_MAX_BYTES = 1 << 16


@dataclasses.dataclass(frozen=True)
class WitnessEndpoint:
    vkey: note.VerifierKey
    url: str            # the submission prefix; POST url + "/add-checkpoint"

    @property
    def name(self) -> str:
        return self.vkey.name


class WitnessRefused(RuntimeError):
    """A witness answered with a refusal (its status and text) or with no valid cosignature."""


def parse_witness(value: str, *, with_url: bool) -> WitnessEndpoint:
    """``NAME=VKEY@URL`` (serve) or ``NAME=VKEY`` (audit); NAME must be the vkey's own name."""
    name, sep, rest = value.partition("=")
    vkey_text, at, url = rest.partition("@") if with_url else (rest, "", "")
    shape = "NAME=VKEY@URL" if with_url else "NAME=VKEY"
    try:
        vkey = note.parse_vkey(vkey_text) if sep else None
    except note.NoteInvalid as invalid:
        raise ConfigurationInvalid(f"--witness {value[:80]!r}: {invalid}") from None
    if vkey is None or vkey.alg != note.ALG_COSIGNATURE_V1 or vkey.name != name:
        raise ConfigurationInvalid(f"--witness {value[:80]!r}: expected {shape} with the witness's cosignature vkey "
                                   "(as `reserve-ledger witness init` prints it) whose name is NAME")
    if with_url and not (at and url.startswith(("http://", "https://"))):
        raise ConfigurationInvalid(f"--witness {value[:80]!r}: expected {shape} with an http(s) URL")
    return WitnessEndpoint(vkey, url.rstrip("/"))


def check_witnesses(witnesses: list[WitnessEndpoint], quorum: int) -> None:
    names = [w.name for w in witnesses]
    if len(set(names)) != len(names) or len(names) > limits.WITNESSES_MAX:
        raise ConfigurationInvalid(f"--witness: names must differ and be at most {limits.WITNESSES_MAX}")
    if not 0 <= quorum <= len(witnesses):
        raise ConfigurationInvalid(f"--witness-quorum {quorum}: must be between 0 and the number of --witness "
                                   f"({len(witnesses)})")


def post_checkpoint(url: str, body: bytes) -> tuple[int, str]:
    request = urllib.request.Request(url + "/add-checkpoint", data=body, method="POST",
                                     headers={"Content-Type": "text/plain"})
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as reply:
            return reply.status, reply.read(RESPONSE_SIZE_MAX_BYTES).decode("utf-8", "replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read(RESPONSE_SIZE_MAX_BYTES).decode("utf-8", "replace")


class WitnessFeed:
    """Keeps one witness up to date with the latest signed head; `step` is its supervised worker."""

    def __init__(self, store, checkpoints: LogCheckpoints, witness: WitnessEndpoint, clock_s: Callable[[], float],
                 post: Callable[[str, bytes], tuple[int, str]] = post_checkpoint):
        self._store = store
        self._checkpoints = checkpoints
        self.witness = witness
        self._clock_s = clock_s
        self._post = post
        latest = store.latest_cosigned_size(witness.name)
        self.cosigned_size = 0 if latest is None else latest[0]
        self._cosigned_root = None if latest is None else note.parse_checkpoint(
            note.parse_note(latest[1].encode()).text).root_hash
        self.cosigned_at_s: float | None = None
        self.head_size = 0
        self._sent_at_s: float | None = None

    def step(self) -> None:
        head = self._store.load_tree_head()
        if head is None:
            return
        self.head_size = head.tree_size
        if (head.tree_size, head.root_hash) == (self.cosigned_size, self._cosigned_root):
            return
        now_s = self._clock_s()
        if self._sent_at_s is not None and now_s - self._sent_at_s < SEND_GAP_S:
            return  # batch: the next step sends whatever head is latest then
        for _ in range(2):  # a 409 tells the size the witness holds: one retry from there
            if self._send(head):
                self._sent_at_s = now_s
                return
        raise WitnessRefused(f"witness {self.witness.name} still disagrees about the size it holds")

    def _send(self, head: TreeHead) -> bool:
        signed = self._checkpoints.signed(head)
        old = self.cosigned_size
        if old > head.tree_size:
            raise WitnessRefused(f"witness {self.witness.name} holds size {old}, beyond the log's latest head "
                                 f"({head.tree_size}): the log was rolled back, or the witness saw another history")
        proof = merkle.consistency_proof(self._store, old, head.tree_size) if 0 < old < head.tree_size else []
        status, text = self._post(self.witness.url, format_add_checkpoint(old, proof, signed.encode()))
        if status == 409 and text.strip().isdigit():
            self.cosigned_size, self._cosigned_root = int(text.strip()), None
            return False
        if status != 200:
            raise WitnessRefused(f"witness {self.witness.name} answered {status}: {text.strip()[:200]}")
        self._store_cosignature(head, signed, text)
        return True

    def _store_cosignature(self, head: TreeHead, signed: note.Note, text: str) -> None:
        try:
            lines = note.parse_signature_lines(text)
        except note.NoteInvalid as invalid:
            raise WitnessRefused(f"witness {self.witness.name} answered 200 without signature lines: {invalid}") \
                from None
        for line in lines:
            timestamp_s = note.cosignature_time_s(signed.text, line, self.witness.vkey)
            if timestamp_s is not None:
                self._store.save_cosignature(head.tree_size, self.witness.name, signed.encode().decode(),
                                             line.line(), timestamp_s)
                self.cosigned_size, self._cosigned_root = head.tree_size, head.root_hash
                self.cosigned_at_s = self._clock_s()
                return
        raise WitnessRefused(f"witness {self.witness.name} answered 200 without a valid cosignature by its key")


@dataclasses.dataclass(frozen=True)
class WitnessedHead:
    tree_size: int
    root_hash: bytes


def witnessed_head_choice(store, latest: Callable[[], TreeHead | None], quorum: int, log_vkey: note.VerifierKey,
                          witnesses: list[WitnessEndpoint]):
    """What the anchor worker anchors when witnesses are configured: the largest head a quorum cosigned, when
    it is newer than the last anchor; otherwise the latest signed head (a witness outage never stops
    anchoring; the audit then names that anchored head as not witnessed). The stored rows are not trusted:
    the checkpoint must carry the log's own signature and `quorum` cosignatures by configured witnesses."""
    def choose():
        head = latest()
        witnessed = store.latest_witnessed(quorum)
        chain = [a for a in store.list_anchors() if a.state not in ("replaced", "abandoned")]
        anchored_size = chain[-1].tree_size if chain else 0
        if witnessed is None or witnessed[0] <= anchored_size or head is None:
            return head
        signed = _proven_witnessed(store, witnessed, quorum, log_vkey, witnesses)
        if signed is None:
            log.warning("the stored cosignatures of tree size %d do not prove a quorum: anchoring the latest head",
                        witnessed[0])
            return head
        made = note.parse_checkpoint(signed.text)
        return WitnessedHead(made.tree_size, made.root_hash)
    return choose


def _proven_witnessed(store, witnessed: tuple[int, str], quorum: int, log_vkey: note.VerifierKey,
                      witnesses: list[WitnessEndpoint]) -> note.Note | None:
    """The stored checkpoint, if the log's key signed it and `quorum` configured witnesses cosigned its text."""
    tree_size, checkpoint_text = witnessed
    try:
        signed = note.open_note(checkpoint_text.encode(), log_vkey)
    except note.NoteInvalid:
        return None
    keys = {w.name: w.vkey for w in witnesses}
    cosigners = set()
    for row in store.list_cosignatures(tree_size):
        key = keys.get(row["witness"])
        try:
            line = note.parse_signature_line(row["signature_line"].rstrip("\n"))  # stored as written
        except note.NoteInvalid:
            continue
        if key is not None and note.cosignature_time_s(signed.text, line, key) is not None:
            cosigners.add(row["witness"])
    return signed if len(cosigners) >= quorum else None


def start_feeds(supervisor, store, checkpoints: LogCheckpoints, witnesses: list[WitnessEndpoint]) -> list[WitnessFeed]:
    """One supervised worker per witness (`witness-NAME`), every POLL_INTERVAL_S."""
    feeds = [WitnessFeed(store, checkpoints, witness, time.monotonic) for witness in witnesses]
    for feed in feeds:
        supervisor.start(f"witness-{feed.witness.name}", feed.step, POLL_INTERVAL_S, first_delay_s=0.1)
    return feeds
