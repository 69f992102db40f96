"""keymesh: a Python client for the keymesh key-management mesh.

>>> import keymesh
>>> client = keymesh.Client.from_env()            # KEYMESH_* variables, or keymesh.Client(endpoints, ...)
>>> ct = client.encrypt("user-pii", b"secret", aad=b"order-42")
>>> client.decrypt(ct, aad=b"order-42")
b'secret'
>>> keymesh.local.hash(b"abc", "sha256").hex()    # computed here, as the Hash RPC would
>>> keymesh.login(client_id="app_123", client_secret=secret)   # once: the session goes to ~/.keymesh
>>> app = keymesh.register("billing", environment="staging", keys=["billing-*"])  # a Client of that application

``keymesh.local`` (hashes and HMACs) and ``keymesh.stream`` (the stream/envelope format) need no generated
code; everything else needs ``libs/python-client/generate.sh`` to have run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import local, stream
from ._retry import RetryPolicy
from .credentials import Credentials
from .errors import KeymeshError

if TYPE_CHECKING:  # imported lazily below: they need the generated modules
    from . import pb
    from .client import Client, DataKey, Endpoints, ResponseStream
    from .home import KeymeshHome, Registered, login, register

__all__ = [
    "Client",
    "Credentials",
    "DataKey",
    "Endpoints",
    "KeymeshError",
    "KeymeshHome",
    "Registered",
    "ResponseStream",
    "RetryPolicy",
    "local",
    "login",
    "pb",
    "register",
    "stream",
]
__version__ = "0.1.0"

_LAZY = {"Client", "DataKey", "Endpoints", "ResponseStream"}
_LAZY_HOME = {"KeymeshHome", "Registered", "login", "register"}


def __getattr__(name: str) -> Any:
    # importlib, not "from . import": that would ask this very __getattr__ for the submodule first.
    if name in _LAZY:
        return getattr(importlib.import_module("keymesh.client"), name)
    if name in _LAZY_HOME:
        return getattr(importlib.import_module("keymesh.home"), name)
    if name == "pb":
        return importlib.import_module("keymesh.pb")
    raise AttributeError(f"module 'keymesh' has no attribute {name!r}")
