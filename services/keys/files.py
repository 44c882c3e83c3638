"""Private files: created with mode 0600 from the first byte, refused when group or others may read them."""

import os
import pathlib
import stat

from services.errors import ConfigurationInvalid, NothingStoredHere

PRIVATE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
SECRET_FILE_SIZE_MAX_BYTES = 64 * 1024


class KeyFileTooOpen(ConfigurationInvalid):
    """A private key or password file that group or others may read or write (checked before it is used)."""


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Create `path` (never replacing a file) with mode 0600 before any byte is written, then sync it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())


def too_open_reason(mode: int) -> str | None:
    """Why a file of this mode is not private (None when only its owner may read or write it)."""
    loose = stat.S_IMODE(mode) & 0o077
    if not loose:
        return None
    who = " and ".join(w for w, bits in (("group", 0o070), ("others", 0o007)) if loose & bits)
    return f"has mode {stat.S_IMODE(mode):04o}: {who} may access it"


def check_private(path: str | os.PathLike, what: str) -> None:
    """Refuse (one line) a private file that is missing or that group or others may access."""
    path = pathlib.Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise NothingStoredHere(f"{what} {path}: no such file") from None
    reason = too_open_reason(mode)
    if reason:
        raise KeyFileTooOpen(f"{what} {path} {reason}; make it private with `chmod 600 {path}`")


def read_private(path: str | os.PathLike, what: str, size_max_bytes: int = SECRET_FILE_SIZE_MAX_BYTES) -> bytes:
    """The bytes of a private file, its mode checked on the open descriptor (no window between check and read)."""
    path = pathlib.Path(path)
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise NothingStoredHere(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigurationInvalid(f"{what} {path} is a directory, not a file") from None
    with os.fdopen(descriptor, "rb") as file:
        reason = too_open_reason(os.fstat(file.fileno()).st_mode)
        if reason:
            raise KeyFileTooOpen(f"{what} {path} {reason}; make it private with `chmod 600 {path}`")
        data = file.read(size_max_bytes + 1)
    if len(data) > size_max_bytes:
        raise ConfigurationInvalid(f"{what} {path} is larger than {size_max_bytes} bytes")
    return data


def read_secret_line(path: str | os.PathLike, what: str) -> str:
    """A password or PIN kept as the first line of a private file (the trailing newline is not part of it)."""
    data = read_private(path, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationInvalid(f"{what} {path} is not UTF-8 text") from None
    line = text.split("\n", 1)[0].rstrip("\r")
    if not line:
        raise ConfigurationInvalid(f"{what} {path} is empty (the secret is its first line)")
    return line
