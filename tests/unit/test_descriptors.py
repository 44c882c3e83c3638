"""Descriptors on custody accounts: the BIP 380 checksum and shape checked by the ledger, the expansion by the
service (embit) against the BIP 380-386 and 389 vectors, and the gap limit recorded only when set.

Vectors are copied from the BIPs' "Test Vectors" sections (github.com/bitcoin/bips, bip-0380 .. bip-0389);
the BIPs' private-key forms are replaced by the xpubs the same vectors list, since the ledger refuses private
keys. Reproduce any script with Bitcoin Core: `bitcoin-cli deriveaddresses "DESC#CHECKSUM" "[0,2]"`.
"""

import hashlib

import pytest

from ledger import commands as cmd
from ledger.descriptors import DescriptorInvalid, descriptor_checksum, parse_descriptor
from ledger.errors import RequestInvalid
from services.reserves.descriptors import account_scripts, expand, require_derivable

XPUB_A = ("xpub6ERApfZwUNrhLCkDtcHTcxd75RbzS1ed54G1LkBUHQVHQKqhMkhgbmJbZRkrgZw4koxb5JaHWkY4ALHY2grBGRjaDMzQLcgJvL"
          "JuZZvRcEL")
XPUB_B = ("xpub68NZiKmJWnxxS6aaHmn81bvJeTESw724CRDs6HbuccFQN9Ku14VQrADWgqbhhTHBaohPX4CjNLf9fq9MYo6oDaPPLPxSb7gwQN"
          "3ih19Zm4Y")
XPUB_13H = ("xpub69H7F5d8KSRgmmdJg2KhpAK8SR3DjMwAdkxj3ZuxV27CprR9LgpeyGmXUbC6wb7ERfvrnKZjXoUmmDznezpbZb7ap6r1D3tgF"
            "xHmwMkQTPH")
XPRV_A = ("xprvA1RpRA33e1JQ7ifknakTFpgNXPmW2YvmhqLQYMmrj4xJXXWYpDPS3xz7iAxn8L39njGVyuoseXzU6rcxFLJ8HFsTjSyQbLYnMp"
          "CqE2VbFWc")
KEY_03 = "03a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd"


def checksummed(body: str) -> str:
    return f"{body}#{descriptor_checksum(body)}"


def scripts_of(body: str, count: int) -> list[str]:
    return [s.script_pubkey.hex() for s in account_scripts({"addresses": [], "descriptor": checksummed(body),
                                                             "gap_limit": 0}, count)]


# --- BIP 380: checksum ---------------------------------------------------------------------------------

def test_the_bip380_checksum_vector_is_reproduced():
    """The checksum of raw(deadbeef) is 89f8spxm (BIP 380's valid vector)."""
    assert descriptor_checksum("raw(deadbeef)") == "89f8spxm"


@pytest.mark.parametrize("text, rule", [
    (f"wpkh({KEY_03})", "DESCRIPTOR_CHECKSUM_MISSING"),
    (f"wpkh({KEY_03})#", "DESCRIPTOR_CHECKSUM_MALFORMED"),
    (f"wpkh({KEY_03})#{descriptor_checksum(f'wpkh({KEY_03})')}x", "DESCRIPTOR_CHECKSUM_MALFORMED"),
    (f"wpkh({KEY_03})#{descriptor_checksum(f'wpkh({KEY_03})')[:7]}", "DESCRIPTOR_CHECKSUM_MALFORMED"),
    (f"wpkh({KEY_03[:-1]}c)#{descriptor_checksum(f'wpkh({KEY_03})')}", "DESCRIPTOR_CHECKSUM_MISMATCH"),
    ("raw(Ü)#00000000", "DESCRIPTOR_CHARACTER_INVALID"),
])
def test_a_missing_short_long_or_wrong_checksum_is_refused(text, rule):
    """BIP 380's invalid checksum vectors, on a descriptor this ledger supports: each is refused by its rule."""
    with pytest.raises(DescriptorInvalid) as refused:
        parse_descriptor(text)
    assert refused.value.rule == rule


# --- BIP 380: key expressions -----------------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    KEY_03, f"[deadbeef/0h/0h/0h]{KEY_03}", f"[deadbeef/0'/0h/0']{KEY_03}", XPUB_A, f"[deadbeef/0h/1h/2h]{XPUB_A}",
    f"[deadbeef/0h/1h/2h]{XPUB_A}/3/4/5", f"[deadbeef/0h/1h/2h]{XPUB_A}/3/4/5/*", f"{XPUB_A}/<0;1>/*",
])
def test_the_valid_public_key_expressions_of_bip380_are_accepted(key):
    """Hex keys, origins with either hardened marker, xpubs with unhardened paths, /* and a multipath step."""
    parse_descriptor(checksummed(f"wpkh({key})"))


@pytest.mark.parametrize("key, rule", [
    (f"[deadbeef/0h/0h/0h/*]{KEY_03}", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"[deadbeef/0h/0h/0h/]{KEY_03}", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"[deadbef/0h/0h/0h]{KEY_03}", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"[deadbeeef/0h/0h/0h]{KEY_03}", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"[deadbeef/0f/0f/0f]{KEY_03}", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"[deadbeef/0H/0H/0H]{KEY_03}", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"[deadbeef/-0/-0/-0]{KEY_03}", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"[aaaaaaaa][aaaaaaaa]{XPUB_A}/0", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"aaaaaaaa]{XPUB_A}/0", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"[gaaaaaaa]{XPUB_A}/0", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    ("[deadbeef]", "DESCRIPTOR_KEY_ORIGIN_INVALID"),
    (f"{XPUB_A}/2147483648", "DESCRIPTOR_PATH_INVALID"),
    (f"{XPUB_A}/1aa", "DESCRIPTOR_PATH_INVALID"),
    (f"{XPUB_A}/3h/4h/5h/*", "DESCRIPTOR_HARDENED_AFTER_XPUB"),
    (f"{XPUB_A}/0/*h", "DESCRIPTOR_HARDENED_AFTER_XPUB"),
    (XPRV_A, "DESCRIPTOR_PRIVATE_KEY"),
    ("L4rK1yDtCWekvXuE6oXD9jCYfFNV2cWRpVuPLBcCU2z8TrisoyY1", "DESCRIPTOR_PRIVATE_KEY"),
    (XPUB_A[:-1] + "F", "DESCRIPTOR_KEY_INVALID"),
    ("04a34b99f22c790c4e36b2b3c2c35a36db06226e41c692fc82b8b56ac1c540c5bd5b8dec5235a0fa8722476c7709c02559e3aa73aa0"
     "3918ba2d492eea75abea235", "DESCRIPTOR_KEY_UNCOMPRESSED"),
    (f"{KEY_03}/0", "DESCRIPTOR_KEY_INVALID"),
])
def test_invalid_key_expressions_and_private_keys_are_refused_by_name(key, rule):
    """BIP 380's invalid key expressions, plus what a public ledger must never hold (private keys) or cannot
    derive (hardened steps after an xpub); an xpub with a broken base58 checksum is refused too."""
    with pytest.raises(DescriptorInvalid) as refused:
        parse_descriptor(checksummed(f"wpkh({key})"))
    assert refused.value.rule == rule


@pytest.mark.parametrize("body", [
    f"pkh({KEY_03})", f"wsh(pkh({KEY_03}))", f"sh(multi(1,{KEY_03}))", f"tr({KEY_03[2:]},pk({KEY_03[2:]}))",
    f"wsh(wsh(multi(1,{KEY_03})))", f"addr(bc1qxyz)", f"wsh({KEY_03})",
])
def test_script_shapes_outside_the_supported_set_are_refused(body):
    """Only wpkh, sh(wpkh), wsh/sh(wsh) of multi|sortedmulti and tr key path are reconciled and proven."""
    with pytest.raises(DescriptorInvalid) as refused:
        parse_descriptor(checksummed(body))
    assert refused.value.rule == "DESCRIPTOR_SCRIPT_UNSUPPORTED"


@pytest.mark.parametrize("body, rule", [
    (f"wsh(multi(0,{KEY_03}))", "DESCRIPTOR_THRESHOLD_INVALID"),
    (f"wsh(multi(2,{KEY_03}))", "DESCRIPTOR_THRESHOLD_INVALID"),
    (f"wsh(multi(a,{KEY_03}))", "DESCRIPTOR_THRESHOLD_INVALID"),
    (f"wsh(multi(1,{','.join([KEY_03] * 21)}))", "DESCRIPTOR_TOO_MANY_KEYS"),
    (f"wpkh({XPUB_A}/<0;1>/<2;3>)", "DESCRIPTOR_MULTIPATH_INVALID"),
    (f"wpkh({XPUB_A}/<>/*)", "DESCRIPTOR_MULTIPATH_INVALID"),
    (f"wpkh({XPUB_A}/<0;>/*)", "DESCRIPTOR_PATH_INVALID"),
    (f"wpkh({XPUB_A}/<0/*)", "DESCRIPTOR_MULTIPATH_INVALID"),
    (f"wpkh({XPUB_A}/<0;0>/*)", "DESCRIPTOR_MULTIPATH_INVALID"),
    (f"wsh(sortedmulti(2,{XPUB_A}/<0;1>/*,{XPUB_B}/0/*))", "DESCRIPTOR_MULTIPATH_INVALID"),
    (f"wsh(sortedmulti(2,{XPUB_A}/0/*,{XPUB_B}/0))", "DESCRIPTOR_RANGE_MIXED"),
])
def test_bad_thresholds_key_counts_and_multipath_steps_are_refused(body, rule):
    """BIP 383's thresholds (0, above n, not a number), at most 20 keys, and BIP 389's invalid multipath forms."""
    with pytest.raises(DescriptorInvalid) as refused:
        parse_descriptor(checksummed(body))
    assert refused.value.rule == rule


# --- BIP 381-386, 389: expansions -------------------------------------------------------------------------

def test_bip382_wpkh_ranged_xpub_expands_to_its_three_vector_scripts():
    """wpkh([ffffffff/13']xpub.../1/2/*): children 0, 1, 2."""
    assert scripts_of(f"wpkh([ffffffff/13']{XPUB_13H}/1/2/*)", 3) == [
        "0014326b2249e3a25d5dc60935f044ee835d090ba859", "0014af0bd98abc2f2cae66e36896a39ffe2d32984fb7",
        "00141fa798efd1cbf95cebf912c031b8a4a6e9fb9f27"]


def test_bip382_wpkh_and_sh_wsh_of_a_fixed_key_give_the_vector_scripts():
    """wpkh(03a3...) and BIP 383's sh(wsh(multi(16, ...))) with 16 fixed keys."""
    assert scripts_of(f"wpkh({KEY_03})", 5) == ["00149a1c78a507689f6f54b847ad1cef1e614ee23f1e"]
    keys = ",".join([
        "03669b8afcec803a0d323e9a17f3ea8e68e8abe5a278020a929adbec52421adbd0",
        "0260b2003c386519fc9eadf2b5cf124dd8eea4c4e68d5e154050a9346ea98ce600",
        "0362a74e399c39ed5593852a30147f2959b56bb827dfa3e60e464b02ccf87dc5e8",
        "0261345b53de74a4d721ef877c255429961b7e43714171ac06168d7e08c542a8b8",
        "02da72e8b46901a65d4374fe6315538d8f368557dda3a1dcf9ea903f3afe7314c8",
        "0318c82dd0b53fd3a932d16e0ba9e278fcc937c582d5781be626ff16e201f72286",
        "0297ccef1ef99f9d73dec9ad37476ddb232f1238aff877af19e72ba04493361009",
        "02e502cfd5c3f972fe9a3e2a18827820638f96b6f347e54d63deb839011fd5765d",
        "03e687710f0e3ebe81c1037074da939d409c0025f17eb86adb9427d28f0f7ae0e9",
        "02c04d3a5274952acdbc76987f3184b346a483d43be40874624b29e3692c1df5af",
        "02ed06e0f418b5b43a7ec01d1d7d27290fa15f75771cb69b642a51471c29c84acd",
        "036d46073cbb9ffee90473f3da429abc8de7f8751199da44485682a989a4bebb24",
        "02f5d1ff7c9029a80a4e36b9a5497027ef7f3e73384a4a94fbfe7c4e9164eec8bc",
        "02e41deffd1b7cce11cde209a781adcffdabd1b91c0ba0375857a2bfd9302419f3",
        "02d76625f7956a7fc505ab02556c23ee72d832f1bac391bcd2d3abce5710a13d06",
        "0399eb0a5487515802dc14544cf10b3666623762fbed2ec38a3975716e2c29c232"])
    assert scripts_of(f"sh(wsh(multi(16,{keys})))", 5) == ["a9147fc63e13dc25e8a95a3cee3d9a714ac3afd96f1e87"]


def test_bip383_sortedmulti_of_two_ranged_xpubs_under_wsh_commits_to_the_vector_multisig_scripts():
    """BIP 383 lists the bare sortedmulti scripts of children 0..2; under wsh() each is the witness script, and
    the output script is OP_0 SHA256(witness script)."""
    witness_scripts = [
        "5221025d5fc65ebb8d44a5274b53bac21ff8307fec2334a32df05553459f8b1f7fe1b62102fbd47cc8034098f0e6a94c6aeee8528abf0a"
        "2153a5d8e46d325b7284c046784652ae",
        "52210264fd4d1f5dea8ded94c61e9641309349b62f27fbffe807291f664e286bfbe6472103f4ece6dfccfa37b211eb3d0af4d0c61dba"
        "9ef698622dc17eecdf764beeb005a652ae",
        "5221022ccabda84c30bad578b13c89eb3b9544ce149787e5b538175b1d1ba259cbb83321024d902e1a2fc7a8755ab5b694c575fce742"
        "c48d9ff192e63df5193e4c7afe1f9c52ae"]
    derived = account_scripts({"addresses": [], "gap_limit": 0,
                               "descriptor": checksummed(f"wsh(sortedmulti(2,{XPUB_A}/*,{XPUB_B}/0/0/*))")}, 3)
    assert [s.witness_script.hex() for s in derived] == witness_scripts
    assert [s.script_pubkey.hex() for s in derived] == [
        "0020" + hashlib.sha256(bytes.fromhex(w)).hexdigest() for w in witness_scripts]


def test_bip386_tr_with_an_xonly_key_gives_the_vector_script():
    """tr(a34b...): the key path output key tweaked with an empty script tree."""
    assert scripts_of(f"tr({KEY_03[2:]})", 3) == [
        "512077aab6e066f8a7419c5ab714c12c67d25007ed55a43cadcacb4d7a970a093f11"]


def test_bip389_multipath_expands_to_receive_then_change_in_lockstep():
    """wpkh(xpub/<1;3>/2/*) is wpkh(xpub/1/2/*) (receive, BIP 382's vector) and wpkh(xpub/3/2/*) (change)."""
    multipath = account_scripts({"addresses": [], "gap_limit": 0,
                                 "descriptor": checksummed(f"wpkh([ffffffff/13h]{XPUB_13H}/<1;3>/2/*)")}, 2)
    assert [(s.branch, s.index) for s in multipath] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [s.script_pubkey.hex() for s in multipath[:2]] == scripts_of(f"wpkh([ffffffff/13']{XPUB_13H}/1/2/*)", 2)
    assert [s.script_pubkey.hex() for s in multipath[2:]] == scripts_of(f"wpkh({XPUB_13H}/3/2/*)", 2)
    assert multipath[0].source == "descriptor receive/0" and multipath[3].source == "descriptor change/1"


def test_the_account_gap_limit_sets_the_window_and_addresses_come_first():
    """Registered addresses' scripts first, then gap_limit children per branch (the account's own, else 20)."""
    body = checksummed(f"wsh(sortedmulti(2,{XPUB_A}/<0;1>/*,{XPUB_B}/<0;1>/*))")
    address = "bc1qng72v5ceptk07htel0wcv6k27fkg6tmmd8887jr2l2yz5a5lnawqqeceya"
    assert len(account_scripts({"addresses": [], "descriptor": body, "gap_limit": 0})) == 40
    scripts = account_scripts({"addresses": [address], "descriptor": body, "gap_limit": 7})
    assert len(scripts) == 1 + 14 and scripts[0].source == f"address {address}"


def test_a_key_that_is_no_curve_point_passes_the_shape_but_not_the_service():
    """02 followed by zeros has the form of a key but is not a point: the service refuses it by name."""
    body = checksummed("wpkh(02" + "00" * 32 + ")")
    parse_descriptor(body)
    with pytest.raises(RequestInvalid) as refused:
        require_derivable(body)
    assert refused.value.violations[0].rule == "DESCRIPTOR_NOT_DERIVABLE"
    assert refused.value.violations[0].field == "descriptor"
    assert expand(checksummed(f"wpkh({KEY_03})")).ranged is False


# --- OpenAccount -------------------------------------------------------------------------------------------

def open_account(**fields) -> cmd.OpenAccount:
    return cmd.OpenAccount(**{"request_id": "r1", "account_id": "vault-a", "kind": "cold", "custodian": "C",
                              "wallet_label": "W", "quorum_required": 2, "quorum_total": 3, **fields})


def test_open_account_names_the_descriptor_problem_in_its_field_violation():
    """A descriptor without its checksum is INVALID_ARGUMENT on field `descriptor` with the rule as reason."""
    with pytest.raises(RequestInvalid) as refused:
        open_account(descriptor=f"wpkh({KEY_03})").validate()
    assert [(v.field, v.rule) for v in refused.value.violations] == [("descriptor", "DESCRIPTOR_CHECKSUM_MISSING")]


@pytest.mark.parametrize("gap_limit, descriptor, rule", [
    (10_001, f"wpkh({XPUB_A}/0/*)", "GAP_LIMIT_INVALID"),
    (-1, f"wpkh({XPUB_A}/0/*)", "GAP_LIMIT_INVALID"),
    (5, f"wpkh({KEY_03})", "GAP_LIMIT_WITHOUT_RANGED_DESCRIPTOR"),
    (5, "", "GAP_LIMIT_WITHOUT_RANGED_DESCRIPTOR"),
])
def test_a_gap_limit_out_of_range_or_without_a_ranged_descriptor_is_refused(gap_limit, descriptor, rule):
    """The gap limit is 1..10000 and means something only for a descriptor ending in /*."""
    with pytest.raises(RequestInvalid) as refused:
        open_account(descriptor=checksummed(descriptor) if descriptor else "", gap_limit=gap_limit).validate()
    assert [(v.field, v.rule) for v in refused.value.violations] == [("gap_limit", rule)]


def test_the_gap_limit_is_recorded_only_when_set():
    """An unset gap limit leaves the payload (hence the event and its digest) exactly as before the field existed."""
    ranged = checksummed(f"wpkh({XPUB_A}/<0;1>/*)")
    assert "gap_limit" not in open_account(descriptor=ranged).payload()
    assert open_account(descriptor=ranged, gap_limit=100).payload()["gap_limit"] == 100
    open_account(descriptor=ranged, gap_limit=100).validate()


# --- the replay's half of the pairing ---------------------------------------------------------------------

def opened_event(**data) -> dict:
    from ledger.events import parse_canonical_bytes
    from tests.unit.test_audit import opened
    event = parse_canonical_bytes(opened(0, "vault-a"))
    event["data"].update(data)
    return event


def test_the_replay_folds_a_recorded_gap_limit_and_refuses_one_the_command_would_not_record():
    """gap_limit recorded with a ranged descriptor is folded into the account; an explicit 0 (which the command
    never records), a gap limit without a ranged descriptor, a checksumless descriptor or an unknown field
    written into the log are each refused by the replay, naming the rule."""
    from ledger.state import InvariantBroken, ReserveState
    ranged = checksummed(f"wsh(sortedmulti(2,{XPUB_A}/<0;1>/*,{XPUB_B}/<0;1>/*))")
    state = ReserveState()
    state.apply(opened_event(descriptor=ranged, gap_limit=50))
    assert state.accounts["vault-a"].gap_limit == 50 and state.accounts["vault-a"].descriptor == ranged
    for data, rule in (({"descriptor": ranged, "gap_limit": 0}, "EVENT_NOT_AS_DECIDED"),
                       ({"descriptor": checksummed(f"wpkh({KEY_03})"), "gap_limit": 5},
                        "GAP_LIMIT_WITHOUT_RANGED_DESCRIPTOR"),
                       ({"descriptor": f"wpkh({KEY_03})"}, "DESCRIPTOR_CHECKSUM_MISSING"),
                       ({"descriptor": ranged, "change_descriptor": ranged}, "EVENT_MALFORMED")):
        with pytest.raises(InvariantBroken) as refused:
            ReserveState().apply(opened_event(**data))
        assert refused.value.rule == rule, refused.value
