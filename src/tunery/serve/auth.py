"""Who is calling and whether they may: bearer keys, model scopes, admin rights, rate limits."""

from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass


@dataclass
class Bucket:
    tokens: float
    updated: float


def take(bucket: Bucket, now: float, *, rate: float, size: float, cost: float = 1.0) -> float:
    """Token bucket: refill at ``rate`` per second up to ``size``, then spend ``cost``.

    Returns 0 when admitted (the bucket is charged), else the seconds until ``cost`` tokens will be
    there (the bucket is only refilled)."""
    bucket.tokens = min(size, bucket.tokens + max(0.0, now - bucket.updated) * rate)
    bucket.updated = now
    if bucket.tokens >= cost:
        bucket.tokens -= cost
        return 0.0
    return (cost - bucket.tokens) / rate


class RateLimiter:
    """Per-key token buckets, in this process.

    With ``--workers N`` each worker enforces ``rate / N`` and ``burst / N`` (at least 1), so the
    total across workers stays within the plan; quotas, unlike rates, are exact across processes.
    """

    def __init__(self, *, share: int = 1) -> None:
        self.share = max(1, share)
        self._buckets: dict[str, Bucket] = {}
        self._lock = threading.Lock()

    def check(self, key_id: str, now: float, *, rate: float | None, size: float, spend: bool = True) -> int:
        """0 if admitted, else whole seconds to wait (for Retry-After). With ``spend=False`` the
        bucket is only looked at: the request is checked before other refusals (quota), and only
        spends its token once nothing else refuses it."""
        if rate is None:
            return 0
        rate, size = rate / self.share, max(1.0, size / self.share)
        with self._lock:
            bucket = self._buckets.setdefault(key_id, Bucket(tokens=size, updated=now))
            wait = take(bucket, now, rate=rate, size=size, cost=1.0 if spend else 0.0)
            if not spend and bucket.tokens < 1.0:
                wait = (1.0 - bucket.tokens) / rate
        return 0 if wait == 0 else max(1, math.ceil(wait))

    def refund(self, key_id: str, *, rate: float | None, size: float) -> None:
        """Give back the token of a request that was refused after spending it (over quota at commit)."""
        if rate is None:
            return
        size = max(1.0, size / self.share)
        with self._lock:
            bucket = self._buckets.get(key_id)
            if bucket is not None:
                bucket.tokens = min(size, bucket.tokens + 1.0)


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None if absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyCache:
    """Checked keys, trusted for ``ttl`` seconds: most requests skip the store. Revoking a key
    through this process drops it at once; other processes see the revocation within ``ttl``.
    Entries are found by the SHA-256 of the token, so no secret is compared or kept here.

    A revocation must not be undone by an authentication that read the key just before it: such a
    request would put the key back for ``ttl`` seconds. So an insertion carries the ``generation``
    read before the store was asked (``generation()``), and every ``drop`` starts a new generation:
    an insertion from before a drop is ignored (that one request still goes through, as one that
    arrived a moment earlier would have; the next reads the store).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[bytes, tuple[float, object]] = {}
        self._generation = 0
        self._lock = threading.Lock()

    def generation(self) -> int:
        with self._lock:
            return self._generation

    def get(self, token: str, now: float):
        if self.ttl <= 0:
            return None
        with self._lock:
            entry = self._entries.get(_digest(token))
        if entry is None or now - entry[0] > self.ttl:
            return None
        return entry[1]

    def put(self, token: str, info, now: float, generation: int) -> bool:
        """Cache ``info`` unless a key was dropped since ``generation``; True if cached."""
        if self.ttl <= 0:
            return False
        with self._lock:
            if generation != self._generation:
                return False
            if len(self._entries) > 100_000:  # bounded: forget everything rather than grow
                self._entries.clear()
            self._entries[_digest(token)] = (now, info)
            return True

    def drop(self, key_id: str) -> None:
        with self._lock:
            self._generation += 1
            for digest in [d for d, (_, info) in self._entries.items() if getattr(info, "key_id", None) == key_id]:
                del self._entries[digest]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
