"""Fair shares of one notifier process's deliveries: at most so many at once per receiver (scheme, host and port
of the webhook) and per API key, so one dead receiver or one key's flood cannot hold every slot for
WEBHOOK_TIMEOUT_SEC while other keys' events wait."""

from __future__ import annotations

from collections import Counter
from urllib.parse import urlsplit


def receiver_of(url: str) -> str:
    """The receiver a webhook URL names: `scheme://host:port` (lower case), what its slots are counted by."""
    parts = urlsplit(url)
    return f"{parts.scheme.lower()}://{(parts.hostname or '').lower()}:{parts.port or ''}"


class Slots:
    """Deliveries under way per receiver and per key (this process only); take one before a try, give it back."""

    def __init__(self, per_receiver: int, per_key: int) -> None:
        self.per_receiver, self.per_key = per_receiver, per_key
        self._receivers: Counter[str] = Counter()
        self._keys: Counter[str] = Counter()

    def take(self, receiver: str, key: str | None) -> bool:
        """A slot for one try to `receiver` for `key` (None: no key, counted under ""), or False when either is full."""
        owner = key or ""
        if self._receivers[receiver] >= self.per_receiver or self._keys[owner] >= self.per_key:
            return False
        self._receivers[receiver] += 1
        self._keys[owner] += 1
        return True

    def give_back(self, receiver: str, key: str | None) -> None:
        owner = key or ""
        self._receivers[receiver] -= 1
        self._keys[owner] -= 1
        if self._receivers[receiver] <= 0:
            del self._receivers[receiver]
        if self._keys[owner] <= 0:
            del self._keys[owner]
