"""A campaign's state: recipients, their state machine, and the hash-chained audit events.

base.py holds what every command needs, in SQL both backends accept; sqlite.py is the embedded
default (a file per campaign), postgres.py the backend for several hosts (`[state] url_env`).
open_store() picks the one a campaign names.
"""

from __future__ import annotations

import os

from .. import files
from ..campaign.model import Campaign
from ..errors import ConfigError
from .base import PREPARING, SENDING, Store
from .lines import SESSION_EVENTS, ChainProof
from .records import (
    GENESIS,
    TRANSITIONS,
    Change,
    Claimed,
    Event,
    Found,
    ImportResult,
    detail_of,
    epoch_of,
    event_hash,
    file_sha256,
    utcnow,
    vars_of,
)
from .schema import DB_NAME
from .sqlite import SqliteStore

__all__ = ["DB_NAME", "GENESIS", "PREPARING", "SENDING", "SESSION_EVENTS", "ChainProof", "TRANSITIONS", "Change", "Claimed",
           "Event", "Found", "ImportResult",
           "SqliteStore", "Store",
           "detail_of", "epoch_of", "event_hash", "file_sha256", "open_store", "utcnow", "vars_of"]


def open_store(campaign: Campaign) -> Store:
    """The state a campaign names: PostgreSQL where `[state] url_env` is set, else its SQLite file."""
    if campaign.state.url_env is None:
        store = SqliteStore.open(campaign.state_dir)
        try:
            store.bind(campaign.id, campaign.file)
        except BaseException:
            store.close()
            raise
        return store
    url = os.environ.get(campaign.state.url_env, "")
    if not url.strip():
        raise ConfigError(f"{campaign.file}: [state] url_env names {campaign.state.url_env}, which is not set",
                          hint=f"export {campaign.state.url_env}=postgresql://user:password@host/database on this host")
    from .postgres import PgStore  # psycopg is needed only here (the notify[postgres] extra)

    files.private_dir(campaign.state_dir)
    return PgStore(url, campaign.id, campaign.state_dir, what=campaign.state.url_env, stall_after=campaign.state.stall_after)
