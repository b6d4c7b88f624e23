"""Who is calling: client keys (kept as SHA-256 digests) and the admin key, compared in constant
time. A key is read from `Authorization: Bearer`, never logged and never forwarded upstream."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence

from gateway.server.config import ClientKey
from gateway.server.errors import NotFound, Unauthorized


def bearer(headers: Mapping[str, str]) -> str:
    value = headers.get("Authorization", "")
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Keyring:
    """The client keys a gateway accepts; empty: the API is open."""

    def __init__(self, keys: Sequence[ClientKey]) -> None:
        self._keys = [(bytes.fromhex(k.sha256), k) for k in keys]

    @property
    def open(self) -> bool:
        return not self._keys

    def identify(self, headers: Mapping[str, str]) -> ClientKey | None:
        """The caller's key (None when the API is open); Unauthorized otherwise."""
        if self.open:
            return None
        given = bearer(headers)
        if not given:
            raise Unauthorized("You didn't provide an API key: send `Authorization: Bearer <key>`.")
        digest = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
        found: ClientKey | None = None
        # Every digest is compared, without stopping at a match, so the time taken does not
        # depend on which key (if any) matched.
        for expected, key in self._keys:
            if hmac.compare_digest(digest, expected):
                found = key
        if found is None:
            raise Unauthorized("Incorrect API key provided.")  # never echo what was sent
        return found


def check_admin(headers: Mapping[str, str], admin_key: str | None) -> None:
    """Raise unless the request carries the admin key (and the admin API is on)."""
    if admin_key is None:
        raise NotFound("the admin API is off: set `admin.key_env` in gateway.yaml")
    check_key(headers, admin_key, "admin.key_env")


def check_key(headers: Mapping[str, str], key: str | None, setting: str) -> None:
    """Raise unless the request carries `key` (None: no key needed); `setting` names it."""
    if key is None:
        return
    given = bearer(headers).encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(given, key.encode()):
        raise Unauthorized(f"key required (`{setting}`): `Authorization: Bearer <key>`")
