"""The package's shape: the import-linter contracts in pyproject.toml hold, and no module is too long."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
import tomllib

import pytest

from conftest import REPO

PACKAGE = REPO / "lipsync_cli"
MAX_MODULE_LINES = 400  # past this a module is doing more than one concern (STYLE.md)
GENERATED = PACKAGE / "rpc" / "proto_gen"  # written by grpc_tools from the .proto, never by hand


def test_import_contracts_are_kept():
    # the installed console script's entry point, run with this interpreter; no cache, so nothing is
    # written into the checkout and every import is read afresh
    proc = subprocess.run(
        [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()",
         "--no-cache"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    report = proc.stdout + proc.stderr
    if proc.returncode != 0 or "BROKEN" in report or " 0 broken" not in report:
        pytest.fail(f"lint-imports (exit {proc.returncode}):\n{report}", pytrace=False)


def _contracts() -> dict[str, dict]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    return {c["type"] + ":" + c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def test_every_part_of_the_package_has_a_layer():
    # a new top-level module outside the layers would be free of every contract that lists modules
    parts = {f"lipsync_cli.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)]) if m.name != "__main__"}
    contracts = _contracts().values()
    (layers,) = [c for c in contracts if c["type"] == "layers"]
    layered = {name.strip() for layer in layers["layers"] for name in layer.split("|")}
    assert layered == parts
    (grpc_rule,) = [c for c in contracts if c["type"] == "forbidden" and "grpc" in c["forbidden_modules"]]
    assert set(grpc_rule["source_modules"]) == parts - {"lipsync_cli.rpc"}


def test_no_module_is_over_400_lines():
    lengths = {path.relative_to(REPO).as_posix(): len(path.read_text(encoding="utf-8").splitlines())
               for path in PACKAGE.rglob("*.py") if GENERATED not in path.parents}
    assert len(lengths) > 20  # the walk found the package
    too_long = {path: n for path, n in sorted(lengths.items()) if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"
