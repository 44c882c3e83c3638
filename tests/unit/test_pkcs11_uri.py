"""RFC 7512 `pkcs11:` URIs name one key in a token; anything this service cannot mean is one line, and a PIN
never travels in the URI."""

import pytest

from services.errors import ConfigurationInvalid
from services.keys.uri import is_pkcs11_uri, parse_pkcs11_uri


def test_token_object_id_pin_source_and_module_path_are_read_and_percent_decoded():
    uri = parse_pkcs11_uri("pkcs11:token=Reserve%20Bank;object=tree-head;type=private;id=%01%02"
                           "?pin-source=file:/etc/reserve/pin&module-path=/usr/lib/x.so")
    assert (uri.token, uri.object, uri.id) == ("Reserve Bank", "tree-head", b"\x01\x02")
    assert (uri.pin_file, uri.module_path) == ("/etc/reserve/pin", "/usr/lib/x.so")


def test_the_commands_pin_file_and_module_fill_only_what_the_uri_leaves_out():
    uri = parse_pkcs11_uri("pkcs11:token=t;object=o?pin-source=/a").with_defaults("/b", "/lib.so")
    assert (uri.pin_file, uri.module_path) == ("/a", "/lib.so")


def test_a_pin_source_written_as_a_path_attribute_is_accepted():
    assert parse_pkcs11_uri("pkcs11:token=t;object=o;pin-source=file:///run/pin").pin_file == "/run/pin"


@pytest.mark.parametrize("text, words", [
    ("pkcs11:token=t;object=o;pin-value=1234", "process list"),
    ("pkcs11:token=t;object=o?pin-value=1234", "process list"),
    ("pkcs11:token=t", "object=LABEL"),
    ("pkcs11:object=o", "token=LABEL"),
    ("pkcs11:token=t;object=o;slot-id=3", "slot-id"),
    ("pkcs11:token=t;object=o;type=secret-key", "type must be private"),
    ("pkcs11:token=t;token=u;object=o", "given twice"),
    ("pkcs11:token=t;object", "NAME=VALUE"),
    ("pkcs11:token=%ff;object=o", "UTF-8"),
    ("file:/etc/key.pem", "not a pkcs11: URI"),
])
def test_what_the_service_cannot_mean_is_refused_in_one_line(text, words):
    with pytest.raises(ConfigurationInvalid) as refused:
        parse_pkcs11_uri(text)
    assert words in str(refused.value) and "\n" not in str(refused.value)


def test_only_the_pkcs11_scheme_names_a_token_key():
    assert is_pkcs11_uri("PKCS11:token=t;object=o") and not is_pkcs11_uri("./pkcs11.pem") and not is_pkcs11_uri(None)
