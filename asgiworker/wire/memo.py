"""The one bounded memo table, used wherever per-request work is done once per distinct value."""

from __future__ import annotations

from typing import Any, Dict


class BoundedMemo(Dict[Any, Any]):
    """A dict of remembered results that starts over when it reaches ``limit`` entries: clients
    and apps repeat the same few values (names, hosts, header sets), and whoever sends endless new
    ones only costs us the work we would have done without the memo. Look up with ``get``."""

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: Any, value: Any) -> Any:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value
        return value
