"""Every keymesh.v1 message and enum in one namespace: ``pb.EncryptRequest(...)``, ``pb.KEY_PURPOSE_ENCRYPT``.

The generated modules themselves (with their ``.pyi`` type stubs) are ``keymesh.v1.<file>_pb2``; this module
only gathers their names. Generate them first: ``libs/python-client/generate.sh``.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

try:
    from keymesh.v1 import (
        audit_service_pb2,
        audit_service_pb2_grpc,
        common_pb2,
        crypto_service_pb2,
        crypto_service_pb2_grpc,
        key_service_pb2,
        key_service_pb2_grpc,
        token_service_pb2,
        token_service_pb2_grpc,
    )
except ImportError as e:  # pragma: no cover - a set-up error, reported clearly
    raise ImportError(
        f"keymesh's generated gRPC modules are missing or broken ({e}); run libs/python-client/generate.sh "
        "(python3 -m grpc_tools.protoc ... from the repository's proto/)"
    ) from e

MODULES: tuple[ModuleType, ...] = (common_pb2, key_service_pb2, crypto_service_pb2, token_service_pb2, audit_service_pb2)
GRPC_MODULES: tuple[ModuleType, ...] = (
    key_service_pb2_grpc,
    crypto_service_pb2_grpc,
    token_service_pb2_grpc,
    audit_service_pb2_grpc,
)


def _export() -> None:
    names: dict[str, Any] = {}
    for module in MODULES:
        for name in module.DESCRIPTOR.message_types_by_name:
            names[name] = getattr(module, name)
        for name, enum in module.DESCRIPTOR.enum_types_by_name.items():
            names[name] = getattr(module, name)
            for value in enum.values:
                names[value.name] = value.number
    globals().update(names)


_export()


def __getattr__(name: str) -> Any:  # for type checkers: every name above is dynamic
    raise AttributeError(f"keymesh.v1 has no message or enum {name!r}")
