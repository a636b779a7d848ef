"""Regenerate src/modelfence/grpc/inference_pb2.py and .pyi from inference.proto (beside this).

    pip install 'grpcio-tools==1.73.1'   # its protoc writes protobuf 6.31 code
    python proto/generate.py

The .proto and this script are build inputs, kept out of the package: at run time only the
generated modules are needed, and they are committed, so installing modelfence needs no protoc.
The .pyi is kept for mypy and editors: it types every message's fields and constructor.
Two choices:

* grpcio-tools 1.73 (protobuf 6.31 code), not a newer one: code generated for protobuf 7
  refuses to load on protobuf 6, which tritonclient[grpc] 2.73 pins (< 7); protobuf 7 loads
  6.31 code.
* The descriptors go into a pool of their own, not protobuf's default pool: tritonclient's
  and MLServer's generated modules declare the same `inference.*` messages there, and a
  second declaration of a name in one pool fails the import. On the wire only field numbers
  and the method paths (gateway/grpc_service.py names them) count.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
PACKAGE = HERE.parent / "src" / "modelfence" / "grpc"
HEADER = ("# Generated from proto/inference.proto by proto/generate.py "
          "(grpcio-tools 1.73.1);\n# descriptors in a pool of their own. Do not edit.\n")


def main() -> None:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}",
                        f"--python_out={out}", f"--pyi_out={out}",
                        str(HERE / "inference.proto")], check=True)
        code = (Path(out) / "inference_pb2.py").read_text()
        private = code.replace("_descriptor_pool.Default()", "_descriptor_pool.DescriptorPool()")
        if private == code:
            raise SystemExit("protoc's output no longer adds to the default pool: check it")
        (PACKAGE / "inference_pb2.py").write_text(HEADER + private)
        (PACKAGE / "inference_pb2.pyi").write_text(
            HEADER + (Path(out) / "inference_pb2.pyi").read_text())


if __name__ == "__main__":
    main()
