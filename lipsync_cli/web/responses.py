"""Small pieces every HTTP route of `lipsync serve` shares: the JSON error body and naming the peer in logs."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import Scope


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """`{"error": message}` with the given HTTP status: the one error shape of the whole API."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def describe_peer(scope: Scope) -> str:
    """"host:port" of the connection's peer, for log lines."""
    client = scope.get("client")
    return f"{client[0]}:{client[1]}" if client else "an unknown client"
