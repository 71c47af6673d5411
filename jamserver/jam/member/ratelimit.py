"""Token bucket for per-connection prompt limits (pure: time is passed in)."""

from __future__ import annotations


class TokenBucket:
    """`per_minute` actions a minute on average, with bursts of up to `burst`."""

    def __init__(self, per_minute: int, burst: int | None = None) -> None:
        if per_minute < 1:
            raise ValueError("per_minute must be at least 1")
        self.rate = per_minute / 60.0
        self.capacity = float(burst if burst is not None else min(per_minute, 5))
        self.tokens = self.capacity
        self.updated: float | None = None

    def allow(self, now: float) -> bool:
        """Take one token if there is one."""
        if self.updated is not None:
            self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next token."""
        return max(0.0, (1.0 - self.tokens) / self.rate)
