"""Field encryption (AES-256-GCM) and keyed blind indexes.

A token looks like ``v1.<key id>.<base64(nonce | ciphertext+tag)>``. The key id lets rotation
find rows still under an old key, and lets decryption pick the right key without trying all.
The associated data binds a token to its table, column and row, so a value copied to another
column or another patient fails to decrypt instead of showing someone else's data.
"""

import base64
import hashlib
import hmac
import os
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

VERSION = "v1"
NONCE_BYTES = 12


class DecryptionError(Exception):
    """A stored value could not be decrypted: wrong key, or tampered or moved data."""


def _decode_key(raw: str, variable: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4))
    except ValueError:
        key = b""
    if len(key) != 32:
        raise ImproperlyConfigured(
            f"{variable} must hold url-safe base64 of 32 random bytes; "
            f'make one with: python3 -c "import os, base64; '
            f'print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'
        )
    return key


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"clinic-crm key id" + key).hexdigest()[:8]


class Keyring:
    """The encryption keys, newest first; encrypts with the newest, decrypts with any."""

    def __init__(self, raw_keys: tuple[str, ...]):
        if not raw_keys:
            raise ImproperlyConfigured("FIELD_ENCRYPTION_KEYS is empty.")
        keys = [_decode_key(raw, "FIELD_ENCRYPTION_KEYS") for raw in raw_keys]
        self.current_id = key_id(keys[0])
        self._current = AESGCM(keys[0])
        self._by_id = {key_id(k): AESGCM(k) for k in keys}

    def encrypt(self, plaintext: str, context: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.encrypt(nonce, plaintext.encode(), context.encode())
        body = base64.urlsafe_b64encode(nonce + sealed).decode().rstrip("=")
        return f"{VERSION}.{self.current_id}.{body}"

    def decrypt(self, token: str, context: str) -> str:
        """Plaintext of `token`; raises DecryptionError, never returns the ciphertext."""
        version, kid, body = _split(token)
        aead = self._by_id.get(kid)
        if aead is None:
            raise DecryptionError(
                f"value was encrypted with key {kid}, which is not in FIELD_ENCRYPTION_KEYS"
            )
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            return aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], context.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError(f"value for {context} failed authentication") from exc


def _split(token: str) -> tuple[str, str, str]:
    parts = token.split(".")
    if len(parts) != 3 or parts[0] != VERSION:
        raise DecryptionError("value is not an encrypted token")
    return parts[0], parts[1], parts[2]


def token_key_id(token: str) -> str:
    return _split(token)[1]


@lru_cache(maxsize=4)
def _keyring(raw_keys: tuple[str, ...]) -> Keyring:
    return Keyring(raw_keys)


def keyring() -> Keyring:
    return _keyring(tuple(settings.FIELD_ENCRYPTION_KEYS))


@lru_cache(maxsize=4)
def _index_key(raw: str, variable: str = "BLIND_INDEX_KEY") -> bytes:
    return _decode_key(raw, variable)


@lru_cache(maxsize=4)
def _keyed(key: bytes) -> "hmac.HMAC":
    return hmac.new(key, digestmod=hashlib.sha256)


def _hmac_hex(key: bytes, message: str) -> str:
    # A copy of an HMAC already keyed: half the time of hmac.digest, which sets the key up
    # again on every call (an import computes several digests per patient).
    keyed = _keyed(key).copy()
    keyed.update(message.encode())
    return keyed.hexdigest()


def blind_index(domain: str, normalised: str) -> str:
    """Keyed HMAC of a normalised value: equal inputs match, the value itself can't be read."""
    key = _index_key(settings.BLIND_INDEX_KEY)
    return _hmac_hex(key, f"{domain}\x00{normalised}")


def blind_index_previous(domain: str, normalised: str) -> str | None:
    """The same HMAC under BLIND_INDEX_KEY_PREVIOUS, while a re-index is under way; else None."""
    raw = getattr(settings, "BLIND_INDEX_KEY_PREVIOUS", "")
    if not raw:
        return None
    return _hmac_hex(_index_key(raw, "BLIND_INDEX_KEY_PREVIOUS"), f"{domain}\x00{normalised}")


# A fixed message, never a patient's value: its HMAC tells one blind-index key from another
# without revealing the key or anything indexed with it.
KEY_CHECK_LABEL = "clinic-crm key check v1"


def blind_index_check(raw_key: str, variable: str = "BLIND_INDEX_KEY") -> str:
    """Check value of a blind-index key (HMAC of a fixed label)."""
    return _hmac_hex(_index_key(raw_key, variable), KEY_CHECK_LABEL)


def keys_validate() -> None:
    """Raise ImproperlyConfigured, naming the variable, if a configured key is malformed."""
    _keyring(tuple(settings.FIELD_ENCRYPTION_KEYS))
    _index_key(settings.BLIND_INDEX_KEY)
    previous = getattr(settings, "BLIND_INDEX_KEY_PREVIOUS", "")
    if previous:
        _index_key(previous, "BLIND_INDEX_KEY_PREVIOUS")
