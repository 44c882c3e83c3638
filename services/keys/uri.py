"""RFC 7512 `pkcs11:` URIs naming one key in a token, e.g.

    pkcs11:token=reserve;object=tree-head-key;type=private?pin-source=file:/etc/reserve/pin&module-path=/usr/lib/x.so

Path attributes (separated by ';'): token (the token's label), object (the key's label), type (private or
public; the private half is used either way), id (percent-encoded CKA_ID bytes). Query attributes ('&'):
pin-source (a file holding the PIN; 'file:' URI or a path), module-path (the PKCS#11 library). A PIN given in
the URI itself (pin-value) is refused: it would show on the command line and in the process list.
"""

import dataclasses
from urllib.parse import unquote_to_bytes

from services.errors import ConfigurationInvalid

SCHEME = "pkcs11:"
PATH_ATTRIBUTES = ("token", "object", "type", "id")
QUERY_ATTRIBUTES = ("pin-source", "module-path")
URI_LENGTH_MAX = 2048


@dataclasses.dataclass(frozen=True)
class Pkcs11Uri:
    token: str
    object: str
    id: bytes | None = None
    pin_file: str | None = None
    module_path: str | None = None

    def with_defaults(self, pin_file: str | None, module_path: str | None) -> "Pkcs11Uri":
        """The URI's own pin-source and module-path win; the command's --pin-file / --pkcs11-module fill gaps."""
        return dataclasses.replace(self, pin_file=self.pin_file or pin_file, module_path=self.module_path or module_path)

    def __str__(self) -> str:
        return f"pkcs11:token={self.token};object={self.object}"


def is_pkcs11_uri(text: str | None) -> bool:
    return bool(text) and str(text).lower().startswith(SCHEME)


def _decode(text: str, attribute: str, uri: str) -> bytes:
    try:
        return unquote_to_bytes(text)
    except ValueError:
        raise ConfigurationInvalid(f"{uri}: the value of {attribute} is not percent-encoded correctly") from None


def _pairs(component: str, separator: str, uri: str) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    for part in filter(None, component.split(separator)):
        name, equals, value = part.partition("=")
        name = name.strip().lower()
        if not equals:
            raise ConfigurationInvalid(f"{uri}: {part!r} is not NAME=VALUE")
        if name in found:
            raise ConfigurationInvalid(f"{uri}: {name} is given twice")
        found[name] = _decode(value, name, uri)
    return found


def _text(value: bytes, attribute: str, uri: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationInvalid(f"{uri}: {attribute} is not UTF-8") from None


def _pin_file(source: bytes | None, uri: str) -> str | None:
    if source is None:
        return None
    text = _text(source, "pin-source", uri)
    return text[len("file:"):].removeprefix("//") if text.startswith("file:") else text


def parse_pkcs11_uri(uri: str) -> Pkcs11Uri:
    """The key a `pkcs11:` URI names; one line (ConfigurationInvalid) for anything it cannot mean."""
    if not is_pkcs11_uri(uri) or len(uri) > URI_LENGTH_MAX:
        raise ConfigurationInvalid(f"{uri[:80]!r} is not a pkcs11: URI (RFC 7512) of at most {URI_LENGTH_MAX} chars")
    path, _, query = uri[len(SCHEME):].partition("?")
    attributes = _pairs(path, ";", uri)
    options = _pairs(query, "&", uri)
    if "pin-value" in attributes or "pin-value" in options:
        raise ConfigurationInvalid(f"{uri}: a PIN in the URI shows in the process list; put it in a file readable "
                                   "by the service only and name it with pin-source=file:PATH (or --pin-file)")
    if "pin-source" in attributes:  # tolerated where people often write it
        options.setdefault("pin-source", attributes.pop("pin-source"))
    unknown = sorted(set(attributes) - set(PATH_ATTRIBUTES)) + sorted(set(options) - set(QUERY_ATTRIBUTES))
    if unknown:
        raise ConfigurationInvalid(f"{uri}: unsupported attribute(s) {', '.join(unknown)}; this service reads "
                                   f"{', '.join(PATH_ATTRIBUTES + QUERY_ATTRIBUTES)}")
    if "token" not in attributes or "object" not in attributes:
        raise ConfigurationInvalid(f"{uri}: name the key with both token=LABEL and object=LABEL")
    if attributes.get("type", b"private") not in (b"private", b"public"):
        raise ConfigurationInvalid(f"{uri}: type must be private (or public) for a signing key")
    module = options.get("module-path")
    return Pkcs11Uri(token=_text(attributes["token"], "token", uri), object=_text(attributes["object"], "object", uri),
                     id=attributes.get("id"), pin_file=_pin_file(options.get("pin-source"), uri),
                     module_path=None if module is None else _text(module, "module-path", uri))
