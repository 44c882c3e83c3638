"""Rotating the tree-head key: one SigningKeyRotated event, signed by both keys, in a commit the new key signs.

Run with the service stopped (every replica): the command opens the log with the old key (which must verify
the latest head), records the event (ledger/key_history.py) in a commit whose head the NEW key signs, then
re-seals the saved states the old key had proven, with the new key. From then on `serve --signing-key NEW`;
heads before the rotation stay verifiable with the old key, and auditors keep pinning the first key.
"""

import dataclasses
from typing import Callable

from ledger import errors as ledger_errors
from ledger.application import PROJECTION_NAME, Recorded, ReserveLedger
from ledger.commands import Caller, RotateSigningKey
from ledger.key_history import rotation_message
from services.errors import CheckFailed, ConfigurationInvalid
from services.store.seals import StateProofs
from services.store.signing import TreeHeadSigner

ROTATION_CALLER = Caller("system", "system")


@dataclasses.dataclass(frozen=True)
class SavedState:
    name: str | None  # the projection's name; None for a checkpoint
    position: int
    state_bytes: bytes


def _proven_saved_states(store, public_key_raw: bytes) -> list[SavedState]:
    proofs = StateProofs(store, public_key_raw)
    found = []
    projection = store.load_projection(PROJECTION_NAME)
    if projection is not None:
        found.append(SavedState(PROJECTION_NAME, *projection))
    for position in store.checkpoint_positions():
        found.append(SavedState(None, *store.load_checkpoint(position)))
    return [s for s in found if proofs.unproven_reason(s.position, s.state_bytes) is None]


def _reseal(store, saved: list[SavedState], new_key) -> None:
    proofs = StateProofs(store, new_key.public_key_bytes, new_key)
    for state in saved:
        seal = proofs.seal(state.position, state.state_bytes)
        if seal is None:
            continue
        if state.name is None:
            store.save_checkpoint(state.position, state.state_bytes, seal, replace=True)
        else:
            store.save_projection(state.name, state.position, state.state_bytes, seal, replace=True)


def rotation_command(old_key, new_key) -> RotateSigningKey:
    message = rotation_message(old_key.public_key_bytes, new_key.public_key_bytes)
    return RotateSigningKey(request_id=f"rotate-tree-head-key-{new_key.public_key_bytes.hex()[:16]}",
                            previous_public_key=old_key.public_key_bytes.hex(),
                            public_key=new_key.public_key_bytes.hex(),
                            previous_key_signature=old_key.sign(message).hex(),
                            new_key_signature=new_key.sign(message).hex())


def rotate_tree_head_key(ledger: ReserveLedger, old_key, new_key, clock_us: Callable[[], int]) -> Recorded:
    """Record the rotation from `old_key` (which must verify the log's latest head) to `new_key`."""
    if old_key.public_key_bytes == new_key.public_key_bytes:
        raise ConfigurationInvalid("the new tree-head key is the current one: give another key")
    signer = TreeHeadSigner(ledger.store, old_key, clock_us)
    alarm = signer.open_log()
    if alarm is not None:
        raise CheckFailed(f"the log does not check under the current key ({alarm}); nothing was rotated")
    if ledger.store.load_tree_head() is None:
        raise ConfigurationInvalid("the log is empty: start the service with the new key instead of rotating")
    saved = _proven_saved_states(ledger.store, old_key.public_key_bytes)
    command = rotation_command(old_key, new_key)
    try:
        command.validate()
    except ledger_errors.LedgerError as error:
        raise CheckFailed(f"the rotation statement does not hold: {error}") from None
    signer.rotate_to(new_key)
    (outcome,) = ledger.execute([(command, ROTATION_CALLER)], clock_us())
    if isinstance(outcome, ledger_errors.LedgerError):
        raise CheckFailed(f"the rotation was refused: {outcome}")
    _reseal(ledger.store, saved, new_key)
    return outcome
