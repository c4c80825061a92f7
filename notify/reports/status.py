"""Read-only views of a campaign's state: everything `notify status` reports (the deadlines as deadlines.py
says them), who sends it now, and the providers' health."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ..campaign.deadline import (
    JurisdictionStanding,
)
from ..campaign.model import Campaign
from ..content.locales import split_version
from ..content.render import Templates
from ..errors import NotifyError
from ..providers.base import RateChange
from ..store import PREPARING, Store, detail_of, epoch_of
from .deadlines import Deadline, deadline, jurisdiction_dict, jurisdiction_lines, jurisdictions, span


def local(campaign: Campaign, ts: str) -> str:
    """An event's time as every screen gives times: in the campaign's zone, named (#38)."""
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).astimezone(campaign.tz).strftime("%Y-%m-%d %H:%M:%S %Z")


def when_due(due: float, now: float) -> str:
    """A retry's time as a person at a terminal reads it: "in 3 min", or "due now" once it has passed
    (a send under way takes it; without one, the next `send` does)."""
    left = due - now
    return f"in {span(left)}" if left >= 1 else "due now"


@dataclass
class Status:
    """Everything `notify status` says of a campaign (as_dict: the same for `status --json`)."""

    campaign: str
    total: int
    rejected: int
    rows_read: int
    states: dict[str, int]
    in_doubt: int
    in_doubt_unsettled: int
    locales: dict[str, int]
    fallbacks: dict[str, int]
    versions: dict[str, int]
    providers: dict[str, int]
    reject_reasons: dict[str, int]
    deferred_replies: dict[str, dict[str, Any]]
    failed_replies: dict[str, dict[str, Any]]
    bounced_replies: dict[str, dict[str, Any]]
    suppressed_reasons: dict[str, int]
    unmatched_feedback: int
    senders: list[Any]  # who sends it right now, preparing included (empty: nobody)
    working: list[dict[str, str]]  # who holds the campaign and what it does: {"who", "doing"} (send, import, ...)
    switches: list[dict[str, Any]]
    next_retry: str | None
    next_retry_said: str | None
    recipients_file: str | None
    recipients_sha256: str | None
    events: int
    seeds: dict[str, Any]
    deadline: Deadline | None
    jurisdictions: list[JurisdictionStanding]
    health: list[str]  # the providers and the breaker as the last run left them
    state_backend: str
    workers: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["deadline"] = self.deadline.as_dict() if self.deadline is not None else None
        out["jurisdictions"] = [jurisdiction_dict(j) for j in self.jurisdictions]
        return out


def _versions(campaign: Campaign, store: Store, templates: Templates | None) -> tuple[Counter[str], Counter[str]]:
    """How many people get each version, and who fell back to another locale than theirs (none where the
    templates cannot be read: `check` says why)."""
    fallbacks: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    try:
        templates = templates or Templates(campaign)
        for version, group in templates.by_version(store.samples()).items():
            for s in group:
                versions[version] += s["count"]
                if split_version(version)[1] != s["locale"]:
                    fallbacks[f"{s['locale'] or '(none)'} -> {version}"] += s["count"]
    except NotifyError:
        pass
    return versions, fallbacks


def status(campaign: Campaign, store: Store, templates: Templates | None = None) -> Status:
    """Everything `notify status` prints."""
    counts = store.counts()
    rejected, reasons = store.reject_summary()
    versions, fallbacks = _versions(campaign, store, templates)
    last = store.last_import()
    due = store.next_due()
    holders = store.holders()  # the lock file and the kernel's table, read once for both fields
    replies = {state: {code: {"count": n, "example": ex} for code, n, ex in store.reply_summary(state)}
               for state in ("deferred", "failed", "bounced")}
    return Status(
        campaign=campaign.id,
        total=sum(counts.values()),
        rejected=rejected,
        rows_read=sum(counts.values()) + rejected,
        states={s: counts.get(s, 0) for s in ("pending", "inflight", "deferred", "sent", "delivered", "bounced",
                                              "complained", "failed", "suppressed", "ineligible")},
        in_doubt=store.doubt_count(),
        in_doubt_unsettled=store.in_doubt_unsettled(),
        locales=store.locale_counts(),
        fallbacks=dict(fallbacks),
        versions=dict(sorted(versions.items(), key=lambda kv: -kv[1])),
        providers=store.provider_counts(),
        reject_reasons=dict(reasons),
        deferred_replies=replies["deferred"],
        failed_replies=replies["failed"],
        bounced_replies=replies["bounced"],
        suppressed_reasons={ex: n for _, n, ex in store.reply_summary("suppressed", top=10)},
        unmatched_feedback=store.unmatched_count(),
        senders=store.senders(holders),
        working=[{"who": who, "doing": doing} for who, doing in holders],
        switches=[{"at": e["ts"], **detail_of(e["detail"])} for e in store.events_of_kind("provider_switched")],
        next_retry=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(due)) if due else None,
        next_retry_said=when_due(due, time.time()) if due else None,
        recipients_file=last["path"] if last else None,
        recipients_sha256=last["sha256"] if last else None,
        events=store.event_count(),
        seeds=store.seeds_sent(),
        deadline=deadline(campaign, store),
        jurisdictions=jurisdictions(campaign, store),
        health=health(campaign, store),
        state_backend=store.backend,
        workers=[worker_view(w) for w in store.workers()][-20:],  # every live one is among the latest
    )


def worker_said(w: dict[str, Any]) -> str:
    """One worker on one line, as `status` and `status --watch` show it."""
    return (f"{w['host']} pid {w['pid']} (session {w['session']}): {w['status']}, sent {w['sent']}, {w['rate']:g}/s, "
            f"last heartbeat {w['last_heartbeat_s']:g} s ago, started {w['started']}")


def worker_view(w: dict[str, Any]) -> dict[str, Any]:
    """One worker session as `status` shows it: host, pid, last heartbeat, sent, rate, live or stalled."""
    silent = max(0.0, float(w["silent"]))
    ran = max(1e-9, float(w["last"]) - epoch_of(w["started"]))
    return {"session": w["id"], "host": w["host"], "pid": w["pid"], "started": w["started"][:19] + "Z",
            "last_heartbeat_s": round(silent, 1), "sent": w["sent"],
            "rate": round(w["sent"] / ran, 1) if w["sent"] else 0.0, "status": w["status"]}


STILL = 30.0  # seconds without an outcome after which a live sender is said to be waiting, not sending


INTERRUPTED = {"SIGINT": "interrupted (Ctrl-C)", "SIGTERM": "stopped by SIGTERM",
               "SIGHUP": "interrupted: its terminal closed (SIGHUP); every message in flight was settled"}


def ended_why(d: dict[str, Any]) -> object:
    """Why the last run ended, from its send_stopped event."""
    if d.get("interrupted"):
        return INTERRUPTED.get(str(d.get("signal")), INTERRUPTED["SIGINT"])
    if d.get("reason"):
        return d["reason"]
    if not d.get("remaining"):
        return "finished"
    if d.get("limit_reached"):  # #38: a canary that stops at its limit did what it was asked
        return f"a canary: --limit {d['limit_reached']} reached, as asked"
    return "stopped"


def sending(campaign: Campaign, store: Store, now: float) -> tuple[list[str], float | None]:
    """Whether anything sends this campaign right now, in lines, and the rate to project a finish at (None:
    nothing to project). Never a rate when nothing sends (#38: --watch showed 152.9/s after the run had
    stopped): the senders are the lock's holder (SQLite) or the live sessions (PostgreSQL)."""
    holders = store.holders()
    senders = store.senders(holders)
    remaining = store.count_unsent()
    if not senders:  # another command may hold the campaign: an import, a move (a send is refused meanwhile)
        lines = [f"sending:  NO: nothing is sending {campaign.id} now; {remaining} to go"]
        lines += [f"working:  notify {doing} ({who}), holding the campaign until it ends" for who, doing in holders]
        if (stop := store.last_event_of(("send_stopped",))) is not None:
            lines.append(f"last run: ended {local(campaign, stop['ts'])}: {' '.join(str(ended_why(stop['detail'])).split())}")
        if remaining:
            lines.append(f"resume:   notify send {campaign.dir}")
        return lines, None
    last = store.recent_rate(200)
    latest = store.last_attempt()
    idle = now - epoch_of(latest["ts"]) if latest else None
    lines = [f"sending:  yes ({', '.join(senders)})"]
    if all(doing == PREPARING for _, doing in holders):  # no rate of an earlier run's outcomes: this one has none
        lines.append(f"rate:     none yet: preparing (importing the recipients, checking and rendering the content); "
                     f"{remaining} to go")
        return lines, None
    if last and idle is not None and idle < STILL:
        lines.append(f"rate:     {last:.1f}/s over the last outcomes; {remaining} to go")
        return lines, last
    if idle is not None and idle < STILL:  # outcomes a moment ago, too few or too close together for a rate
        lines.append(f"rate:     not measured yet (too few outcomes so far); {remaining} to go")
        return lines, None
    waited = f"no message handed over for {span(idle)}" if idle is not None else "no message handed over yet"
    paused = campaign.send.batch_pause if campaign.send.batch_size else 0
    whys = "retries not yet due, the breaker, a domain cap, a provider" + (
        f", the {paused:g} s pause after each batch of {campaign.send.batch_size} ([send] batch_pause)" if paused else "")
    lines.append(f"rate:     {waited} (waiting: {whys}); {remaining} to go")
    return lines, None


def health(campaign: Campaign, store: Store) -> list[str]:
    """The providers and the reputation breaker as the last run left them (#38): each provider of the failover
    order up, down since when and why, or not reached; which one the last switch went to; a breaker pause
    that stands. From the events of the last run (since its send_started), in the campaign's zone."""
    started = store.last_event_of(("send_started",))
    if started is None:
        return []

    def when(ts: str) -> str:
        return dt.datetime.fromtimestamp(epoch_of(ts), campaign.tz).strftime("%H:%M:%S %Z")

    def this_run(kind: str) -> list[dict[str, Any]]:
        # By time, not sequence: on PostgreSQL each worker writes its own chain.
        return [e for e in store.events_of_kind(kind) if e["ts"] >= started["ts"]]

    down: dict[str, tuple[str, str]] = {}
    for e in this_run("provider_down"):
        d = detail_of(e["detail"])
        down.setdefault(str(d.get("provider")), (e["ts"], " ".join(str(d.get("reason") or "").split())))
    switches = this_run("provider_switched")
    current = detail_of(switches[-1]["detail"]).get("to") if switches else None
    said = []
    for name in campaign.send.providers:
        if name in down and name != current:
            ts, why = down[name]
            said.append(f"{name} DOWN since {when(ts)}: {why}")
        elif name == current:
            said.append(f"{name} up (switched to it at {when(switches[-1]['ts'])})")
        else:
            said.append(f"{name} up" if not current and name == campaign.send.providers[0] else f"{name} not needed")
    lines = ["health:   " + "; ".join(said)]
    pause = store.last_event_of(("reputation_paused",))
    ack = store.last_event_of(("reputation_acknowledged",))
    if pause is not None and (ack is None or ack["ts"] < pause["ts"]):
        lines.append(f"breaker:  PAUSED at {when(pause['ts'])}: {pause_said(pause['detail'])}; "
                     f"`notify send {campaign.dir} --acknowledge-reputation` resumes once the cause is understood")
    return lines


def pause_said(d: dict[str, Any]) -> str:
    """A reputation pause's figures in words, as the send said them; an event of another shape as it is."""
    try:
        return (f"hard bounces {d['hard_bounces']} of the last {d['sends']} sends ({d['bounce_rate']:.1%}, limit "
                f"{d['max_bounce_rate']:.1%}), complaints {d['complaints']} ({d['complaint_rate']:.2%}, limit "
                f"{d['max_complaint_rate']:.2%})")
    except (KeyError, TypeError, ValueError):
        return ", ".join(f"{k} {v}" for k, v in d.items())


def watch(campaign: Campaign, store: Store) -> dict[str, Any]:
    """What `status --watch` shows each refresh: counts, whether anything sends (and if not, how the last
    run ended and how to resume), the rate of the last outcomes and the finish projected at it against the
    deadline (only while messages leave), the last rate change and why, the next retry."""
    counts = store.counts()
    now = time.time()
    lines = [f"{campaign.id}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]) if v)]
    now_said, rate = sending(campaign, store, now)
    lines += now_said
    if (due := deadline(campaign, store, rate=rate, project=rate is not None)) is not None:
        lines.append(f"deadline: {due.said}")
    lines += jurisdiction_lines(campaign, jurisdictions(campaign, store, rate=rate, project=rate is not None), top=8)
    lines += ["worker:   " + worker_said(worker_view(w)) for w in store.workers() if w["status"] in ("live", "stalled")]
    lines += health(campaign, store)
    change = store.last_event_of(("rate_changed",))
    if change:
        d = change["detail"]
        said = RateChange(d.get("old"), d.get("new"), "").said()
        lines.append(f"last rate change: {said} at {local(campaign, change['ts'])}: {' '.join(str(d.get('reason')).split())}")
    if (nxt := store.next_due()) is not None:
        lines.append(f"next retry: {when_due(nxt, now)}")
    return {"at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "lines": lines}


def dumps(obj: Any) -> str:
    """`status --json`: readable, non-ASCII as written."""
    return json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=False)
