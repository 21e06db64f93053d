"""What the HTTP layer hands the scoring layer: uploads as bytes, and the budget of upload
bytes all requests hold together. Below both `service.api` (which fills them from request
bodies) and `service.models` (which scores them), so neither imports the other for them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from service.errors import Overloaded


class BufferBudget:
    """Upload bytes held in memory by all requests together (used on the event loop only).

    A request leases bytes as its body arrives and gives them back when it ends; one
    that would go over the limit is refused with 503 overloaded, not buffered.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    @contextmanager
    def lease(self) -> Iterator[Lease]:
        lease = Lease(self)
        try:
            yield lease
        finally:
            self.used -= lease.taken


class Lease:
    def __init__(self, budget: BufferBudget) -> None:
        self.budget = budget
        self.taken = 0

    def __call__(self, n: int) -> None:
        b = self.budget
        if b.used + n > b.limit:
            raise Overloaded(
                "too many upload bytes are held by requests in flight; retry shortly",
                headers={"Retry-After": "1"},
            )
        b.used += n
        self.taken += n


@dataclass
class Upload:
    filename: str | None
    data: bytes
