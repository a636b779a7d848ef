"""A configuration fragment a page adds to its gateway's file (`<!-- extends: FILE -->`).

The page script runs `python -m tests.docs.extend merge FILE FRAGMENT` where the page shows the
fragment (a reader edits FILE), restarts the page's gateway on the merged file, and then
`python -m tests.docs.extend ask BASE FILE KEY`: one row for each model of FILE through the
restarted gateway, which must answer it. The merge is tests/docs/held.py's `merged`: sections
merged, list entries merged by `name`.
"""

from __future__ import annotations

import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from .held import merged


def merge(file: Path, fragment: Path) -> None:
    base: dict[str, Any] = yaml.safe_load(file.read_text())
    part: dict[str, Any] = yaml.safe_load(fragment.read_text())
    file.write_text(yaml.safe_dump(merged(base, part), sort_keys=False))


def ask(base: str, file: Path, key: str) -> None:
    """A row of zeros to each model of `file`, shaped as its `input` says; each must answer
    200 with outputs."""
    config: dict[str, Any] = yaml.safe_load(file.read_text())
    for model in config.get("models", []):
        spec = model["input"]
        width = spec["shape"][-1]
        body = {"inputs": [{"name": spec["name"], "shape": [1, width],
                            "datatype": spec["datatype"], "data": [0.0] * width}]}
        request = urllib.request.Request(  # noqa: S310 (the page's loopback gateway)
            f"{base}/v2/models/{model['name']}/infer", data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as answer:  # noqa: S310 (loopback)
            doc = json.load(answer)
        names = [out["name"] for out in doc["outputs"]]
        print(f"{model['name']} on the extended config answered {names}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "merge":
        merge(Path(args[0]), Path(args[1]))
    elif command == "ask":
        ask(args[0], Path(args[1]), args[2])
    else:
        raise SystemExit(f"unknown command {command!r}: merge or ask")
