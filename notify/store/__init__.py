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
    ATTEMPT_SQL,
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
    is_attempt,
    utcnow,
    vars_of,
)
from .schema import DB_NAME
from .sqlite import SqliteStore

__all__ = ["ATTEMPT_SQL", "DB_NAME", "GENESIS", "PREPARING", "SENDING", "SESSION_EVENTS", "ChainProof", "TRANSITIONS", "Change", "Claimed",
           "Event", "Found", "ImportResult",
           "SqliteStore", "Store",
           "detail_of", "epoch_of", "event_hash", "file_sha256", "is_attempt", "open_store", "utcnow", "vars_of"]


def open_store(campaign: Campaign) -> Store:
    """The state a campaign names: PostgreSQL where `[state] url_env` is set, else its SQLite file."""
    if campaign.state.url_env is None:
        store = SqliteStore.open(campaign.state_dir)
        try:
            if (first := store.begun_as(campaign.id)) != campaign.id:
                raise _id_changed(campaign, first, "this campaign's state was begun as",
                                  "the id is in every Message-ID sent, and bounces are matched by it")
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
    begun = _pg_begun(campaign)
    pg = PgStore(url, campaign.id, campaign.state_dir, what=campaign.state.url_env, stall_after=campaign.state.stall_after)
    if begun is None:
        try:
            files.write_private(campaign.state_dir / PG_BEGUN, campaign.id.encode())
        except BaseException:
            pg.close()
            raise
    return pg


PG_BEGUN = "postgres-campaign-id"  # in the campaign's .notify/: the id its PostgreSQL state was opened under here


def _pg_begun(campaign: Campaign) -> str | None:
    """On PostgreSQL the id names the state (its schema): a changed id would find none and begin a new campaign,
    sending everyone again. This directory keeps the id it opened its state under, and refuses another (on the
    hosts where it was opened: another host's directory knows only its own)."""
    marker = campaign.state_dir / PG_BEGUN
    try:
        with files.open_regular(marker, "", follow=False) as fh:
            begun = fh.read(1024).decode(errors="replace")
    except OSError:
        return None  # none yet (or not ours to read, a planted pipe or link): written once the store opens
    if begun != campaign.id:
        raise _id_changed(campaign, begun, "this campaign's PostgreSQL state was opened here as",
                          "the id names the state in the database: under a new one notify would find none and send "
                          f"everyone again (if nothing was ever sent under {begun!r}, remove {marker} first)")
    return begun


def _id_changed(campaign: Campaign, begun: str, was: str, why: str) -> ConfigError:
    """campaign.toml's id, changed since the campaign's state was begun under another. The id is in every
    Message-ID and X-Notify-Campaign header: under a new one, the bounces of the messages sent before were left
    as another campaign's (their people counted as notified), a resend in doubt went out under another
    Message-ID, and on PostgreSQL, whose schema the id names, everyone was sent again."""
    return ConfigError(f"{campaign.file}: id = {campaign.id!r}, but {was} {begun!r}",
                       hint=f'{why}: put id = "{begun}" back in campaign.toml (a new campaign starts in a directory of its own)')
