"""What every role of the store (the trail, the queue, feedback, the views, the import) needs from a backend, and
from each other: declared once, here, so that each role is a small class that reads as a contract and
mypy checks every use. Store (base.py) joins them over a backend's connection; sqlite.py and postgres.py
supply the connection, transactions and what their dialects spell differently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..errors import StoreError
from .records import GENESIS, Change, Claimed, Event


class Backend:
    """Attributes and methods a backend or another role provides (each raises if none does)."""

    db: Any  # the connection: execute(sql with ? marks, params) -> a cursor; executemany
    state_dir: Path
    token_key: bytes
    chain: int = 0
    backend = "sqlite"
    _head: tuple[int, str] = (0, GENESIS)
    suppression_table: str | None = None
    COUNT_DUE_SQL: str
    NEXT_DUE_SQL: str
    REPUTATION_SQL: str
    PROVIDER_ID_WHERE: str
    OLD_MESSAGE_ID: str
    NO_LIMIT: int | None
    EVENT_COLUMNS: str
    EVENT_ORDER: str
    BUCKET_SQL: str
    DRIVER_ERROR: tuple[type[Exception], ...]

    # --- the backend's (base.py, sqlite.py, postgres.py) ---

    def where(self) -> str:
        raise NotImplementedError

    def transaction(self, chain: bool = True) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _import_cache(self) -> contextlib.AbstractContextManager[None]:
        raise NotImplementedError

    def folded(self, sql: str) -> str:
        raise NotImplementedError

    def json_field(self) -> str:
        raise NotImplementedError

    def json_path(self, column: str) -> str:
        raise NotImplementedError

    def _os_error(self, path: Path, e: OSError) -> StoreError:
        raise NotImplementedError

    # --- the trail's (trail.py) ---

    def _append(self, ev: Event) -> None:
        raise NotImplementedError

    def _append_all(self, events: list[Event], ts: str) -> None:
        raise NotImplementedError

    # --- the queue's (queue.py) ---

    def _recovered(self, rows: list[tuple[Any, ...]], ts: str, why: str, **detail: Any) -> None:
        raise NotImplementedError

    def _suppress_outcomes(self, changes: list[Change]) -> None:
        raise NotImplementedError

    def _mark_suppressed(self, rows: list[tuple[Any, ...]], ts: str) -> None:
        raise NotImplementedError

    def next_due(self) -> float | None:
        raise NotImplementedError

    def release(self, claimed: Iterable[Claimed]) -> None:
        raise NotImplementedError

    def events(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    # --- the views' (views.py) ---

    def recipient_rows(self) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def rejects(self) -> Iterator[tuple[int, str, str, str | None]]:
        raise NotImplementedError
