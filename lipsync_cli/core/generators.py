"""Choosing a mouth generator by name: the one module that knows every kind (see `core.generator`)."""

from __future__ import annotations

from pathlib import Path

from lipsync_cli.core.generator import MouthGenerator
from lipsync_cli.core.mouth import OwnMouthGenerator
from lipsync_cli.core.onnx_generator import OnnxGenerator
from lipsync_cli.errors import GeneratorError

KINDS = ("own", "onnx")


def make_generator(kind: str = "own", *, onnx_path: Path | None = None) -> MouthGenerator:
    """The generator called `kind`: "own" (the avatar's own mouth, no weights) or "onnx" (the network
    at `onnx_path`, loaded and checked now). Raises GeneratorError for another kind or a bad network."""
    if kind == "own":
        return OwnMouthGenerator()
    if kind == "onnx":
        return OnnxGenerator(onnx_path)
    raise GeneratorError(f"unknown generator {kind!r}: use one of {', '.join(map(repr, KINDS))}")
