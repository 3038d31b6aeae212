"""
Bearer tokens: how they are made, hashed and checked for strength.

Pure functions, no I/O but the operating system's random source in
L{newToken}. A token is a secret shown once to whoever provisions a sensor
or a reader; the store keeps only L{tokenHash} of it.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import zlib
from collections import Counter

__all__ = [
    "TOKEN_PREFIX",
    "MIN_TOKEN_BITS",
    "MIN_TOKEN_LENGTH",
    "MAX_TOKEN_LENGTH",
    "newToken",
    "tokenHash",
    "looksLikeToken",
    "estimatedBits",
    "checkImportedToken",
]

#: What every token L{newToken} makes starts with, so that a leaked one is
#: easy to recognise (secret scanners, log greps).
TOKEN_PREFIX = "snt_"

#: The least strength an imported token must show (L{estimatedBits}).
MIN_TOKEN_BITS = 128

#: The shortest and longest text that may be a token (in characters).
MIN_TOKEN_LENGTH = 22
MAX_TOKEN_LENGTH = 256

# Characters a token may hold: printable ASCII without the space. A token
# travels in a line of the sensor protocol and in an HTTP header, where a
# space or a control character would end or split it.
_ALLOWED = frozenset(chr(c) for c in range(0x21, 0x7F))


def newToken() -> str:
    """
    A fresh random token: C{"snt_"} followed by 43 characters of URL-safe
    base64 (no padding) of 32 random bytes from the operating system's
    CSPRNG, i.e. 256 bits.
    """
    raw = secrets.token_bytes(32)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def tokenHash(token: str) -> bytes:
    """
    The 32-byte SHA-256 digest of C{token}'s UTF-8 bytes: what the store
    keeps and what a presented token is compared by. (A fast hash is right
    here: tokens carry at least 128 bits of entropy, so there is no
    dictionary to guess from, unlike passwords.)
    """
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def looksLikeToken(text: object) -> bool:
    """
    Whether C{text} has the shape of a token: a L{str} of
    L{MIN_TOKEN_LENGTH} to L{MAX_TOKEN_LENGTH} printable ASCII characters
    without spaces. Says nothing of its strength or validity: a text that
    fails this is a malformed credential, one that passes may still be wrong.
    """
    return (
        isinstance(text, str)
        and MIN_TOKEN_LENGTH <= len(text) <= MAX_TOKEN_LENGTH
        and all(c in _ALLOWED for c in text)
    )


def estimatedBits(token: str) -> float:
    """
    A conservative estimate of the entropy of C{token} in bits: the least
    of (its length times log2 of the alphabet its character classes span:
    digits 10, lower case 26, upper case 26, punctuation 32), (its length
    times the Shannon entropy of its own character frequencies) and (the
    bits of its zlib compression, header and checksum not counted). The
    last two catch repetitive texts (C{"aaaa..."}, C{"abcdefghij" * 5}); they
    underestimate short random texts, so C{openssl rand -hex 32} (about
    250 bits by this estimate) passes while C{openssl rand -hex 16} may not.
    A token of L{newToken} scores about 215.
    """
    if not token:
        return 0.0
    pool = 0
    if any(c.isdigit() for c in token):
        pool += 10
    if any("a" <= c <= "z" for c in token):
        pool += 26
    if any("A" <= c <= "Z" for c in token):
        pool += 26
    if any(not c.isalnum() for c in token):
        pool += 32
    n = len(token)
    shannon = -sum((k / n) * math.log2(k / n) for k in Counter(token).values())
    compressed = 8 * (len(zlib.compress(token.encode("utf-8", "surrogatepass"), 9)) - _ZLIB_OVERHEAD)
    return min(n * math.log2(pool), n * shannon, float(compressed))


# Bytes zlib adds around any deflate stream (2 header, 4 checksum, and the
# 2 of an empty block): what compressing the empty string gives.
_ZLIB_OVERHEAD = len(zlib.compress(b"", 9))


def checkImportedToken(token: str) -> None:
    """
    Refuse a token generated elsewhere that is malformed or weak.

    @raise ValueError: C{token} does not look like a token
        (L{looksLikeToken}) or L{estimatedBits} gives it fewer than
        L{MIN_TOKEN_BITS}. The message never contains the token.
    """
    if not looksLikeToken(token):
        raise ValueError(
            f"the token must be {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} printable ASCII characters "
            "without spaces"
        )
    bits = estimatedBits(token)
    if bits < MIN_TOKEN_BITS:
        raise ValueError(
            f"the token is too weak (about {bits:.0f} bits, at least {MIN_TOKEN_BITS} needed): "
            "use one made by 'sensornet sensors add', or 'openssl rand -hex 32'"
        )
