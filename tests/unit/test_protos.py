"""The public contract passes `buf lint` (STANDARD + COMMENTS) and every RPC documents its errors."""

import pathlib
import shutil
import subprocess

PROTOS = pathlib.Path(__file__).resolve().parents[2] / "protos"


def test_protos_pass_buf_lint():
    """buf (from the buf-bin wheel) finds no lint violation."""
    buf = shutil.which("buf")
    assert buf, "buf is missing: install the dev extra (pip install -e '.[dev]')"
    result = subprocess.run([buf, "lint"], cwd=PROTOS, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rpc_comment_names_its_errors_and_roles():
    """Each rpc's comment says which roles may call it and which status codes it answers with."""
    for proto in PROTOS.rglob("*.proto"):
        lines = proto.read_text().splitlines()
        for number, line in enumerate(lines):
            if line.strip().startswith("rpc "):
                comment = " ".join(l.strip() for l in lines[max(0, number - 6):number] if l.strip().startswith("//"))
                assert "Roles:" in comment, f"{proto.name}: {line.strip()} does not name its roles"
                assert "Errors" in comment or "Roles: all" in comment, f"{proto.name}: {line.strip()} lacks errors"
