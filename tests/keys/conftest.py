"""A SoftHSM2 token created once per test session (its own SOFTHSM2_CONF in a temporary directory).

SoftHSM2 is a real PKCS#11 token in software (Debian package `softhsm2`, installed by the README's test
command): these tests fail, never skip, when it is missing.
"""

import dataclasses
import os
import pathlib
import shutil
import subprocess
import uuid

import pytest

from services.keys.pkcs11_keys import DEFAULT_MODULE_PATH

TOKEN_LABEL = "reserve-test"
USER_PIN = "4321-user"
SO_PIN = "8765-officer"


@dataclasses.dataclass(frozen=True)
class Token:
    label: str
    pin_file: pathlib.Path
    conf: pathlib.Path

    def uri(self, object_label: str, *, with_pin: bool = False) -> str:
        uri = f"pkcs11:token={self.label};object={object_label}"
        return uri + f"?pin-source=file:{self.pin_file}" if with_pin else uri

    @property
    def env(self) -> dict:
        return {**os.environ, "SOFTHSM2_CONF": str(self.conf)}


@pytest.fixture(scope="session")
def token(tmp_path_factory) -> Token:
    if shutil.which("softhsm2-util") is None or not os.path.isfile(DEFAULT_MODULE_PATH):
        pytest.fail(f"SoftHSM2 is missing (softhsm2-util, {DEFAULT_MODULE_PATH}): install it with "
                    "`apt-get install -y softhsm2` (Debian package)")
    directory = tmp_path_factory.mktemp("softhsm")
    (directory / "tokens").mkdir()
    conf = directory / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {directory / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    # Set before python-pkcs11 first loads the library in this process (SoftHSM2 reads it at C_Initialize).
    os.environ["SOFTHSM2_CONF"] = str(conf)
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", TOKEN_LABEL, "--pin", USER_PIN,
                    "--so-pin", SO_PIN], check=True, capture_output=True, timeout=60, env=os.environ)
    pin_file = directory / "user.pin"
    descriptor = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(descriptor, (USER_PIN + "\n").encode())
    os.close(descriptor)
    return Token(TOKEN_LABEL, pin_file, conf)


@pytest.fixture
def label() -> str:
    """A key label no other test uses (the token lives for the whole session)."""
    return "k-" + uuid.uuid4().hex[:10]
