"""Build hook: generate the gRPC stubs from protos/ with the protoc bundled in grpcio-tools.

The generated modules are git-ignored; every wheel or editable install regenerates them, so the
stubs always match the pinned grpcio-tools (and therefore the grpcio/protobuf runtime floor).
"""

import importlib.util
import pathlib
import subprocess
import sys

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class ProtocBuildHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version, build_data):
        root = pathlib.Path(self.root)
        protos = sorted(str(p.relative_to(root / "protos")) for p in (root / "protos").rglob("*.proto"))
        if not protos:
            return
        googleapis = pathlib.Path(importlib.util.find_spec("google.rpc.status_pb2").origin).parents[2]
        well_known = pathlib.Path(importlib.util.find_spec("grpc_tools").origin).parent / "_proto"
        command = [
            sys.executable, "-m", "grpc_tools.protoc",
            f"-I{root / 'protos'}", f"-I{googleapis}", f"-I{well_known}",
            f"--python_out={root}", f"--pyi_out={root}", f"--grpc_python_out={root}",
            *protos,
        ]
        subprocess.run(command, check=True, cwd=root / "protos")
        build_data["artifacts"].append("reserve_ledger/**")
