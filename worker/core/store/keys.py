"""API keys: random tokens shown once, stored as their SHA-256 (a token is high-entropy, so a fast hash is
enough: there is nothing to brute-force that a slow hash would protect)."""

import hashlib
import secrets

PREFIX = "bds_"


def new_api_key() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
