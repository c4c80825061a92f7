"""Amazon SES (sesv2 SendEmail, raw content) from a small thread pool; every error mapped to an Outcome here.

    error                                                   outcome
    TooManyRequestsException, Throttling(Exception),        TEMPORARY, and the throttle backs off
      LimitExceededException
    Throttling "Daily message quota exceeded"               PROVIDER_DOWN (quota: resume later)
    SendingPausedException, AccountSuspendedException,      PROVIDER_DOWN (clean stop, resumable)
      MailFromDomainNotVerifiedException, NotFoundException,
      AccountSendingPaused-, ConfigurationSetSendingPaused-
    MessageRejected, BadRequestException                    PERMANENT for that recipient
    connection refused / connect timeout (request not sent) TEMPORARY
    read timeout, connection closed, HTTP 5xx               IN_DOUBT: SES may have accepted it
    no credentials                                          PROVIDER_DOWN

botocore's own retries are switched off (total_max_attempts = 1). SES has no idempotency token,
so a retry inside botocore after a timeout could send a second notice that the ledger never
saw. Instead every attempt is one ledger attempt: a throttled or failed call comes back to the
send loop, which records it, backs off, and retries under its own policy.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.exceptions as bx
from botocore.config import Config

from ..campaign.model import SesConfig
from ..content.message import Message
from ..errors import ConfigError
from .base import WITHDRAWN, Kind, Outcome, Readiness, Ready, Wave, Withdrawn

THROTTLING = {"TooManyRequestsException", "Throttling", "ThrottlingException", "LimitExceededException"}
DOWN = {"SendingPausedException", "AccountSuspendedException", "MailFromDomainNotVerifiedException",
        "NotFoundException", "AccountSendingPausedException", "ConfigurationSetSendingPausedException",
        "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId", "ExpiredTokenException"}
PERMANENT = {"MessageRejected", "BadRequestException", "InvalidParameterValue"}
REJECT_WAVE = 10  # MessageRejected in a row: the account or identity is the problem, not the recipients


def classify_error(exc: BaseException) -> Outcome:
    """One boto3/botocore error to an Outcome; a test walks every code SES documents."""
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code, text = str(err.get("Code", "")), str(err.get("Message", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        detail = f"{code}: {text}" if text else code
        if code in THROTTLING:
            if "daily" in text.lower() and "quota" in text.lower():
                return Outcome(Kind.PROVIDER_DOWN, detail=f"{detail} (the 24-hour quota is used up; run send again later)")
            return Outcome(Kind.TEMPORARY, detail=detail, throttled=True)
        if code in DOWN:
            return Outcome(Kind.PROVIDER_DOWN, detail=detail)
        if code in PERMANENT:
            return Outcome(Kind.PERMANENT, detail=detail)
        if status >= 500:
            return Outcome(Kind.IN_DOUBT, detail=f"HTTP {status} {detail}")
        return Outcome(Kind.PERMANENT if 400 <= status < 500 else Kind.TEMPORARY, detail=detail)
    if isinstance(exc, (bx.NoCredentialsError, bx.PartialCredentialsError, bx.NoRegionError)):
        return Outcome(Kind.PROVIDER_DOWN, detail=f"AWS configuration: {exc}")
    if isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        return Outcome(Kind.TEMPORARY, detail=f"could not reach SES: {exc}")  # the request never left
    if isinstance(exc, (bx.ReadTimeoutError, bx.ConnectionClosedError, bx.ConnectionError, bx.HTTPClientError)):
        return Outcome(Kind.IN_DOUBT, detail=f"no answer after the request was sent: {exc}")
    if isinstance(exc, bx.BotoCoreError):
        return Outcome(Kind.TEMPORARY, detail=f"{type(exc).__name__}: {exc}")
    raise TypeError(f"not a boto error: {exc!r}")


@dataclass(frozen=True)
class Quota:
    max_24h: float  # -1: unlimited
    max_rate: float
    sent_24h: float
    enabled: bool
    enforcement: str

    @property
    def remaining(self) -> float:
        return float("inf") if self.max_24h < 0 else max(0.0, self.max_24h - self.sent_24h)


class SesProvider:
    # Tests attach botocore's Stubber (for GetAccount, which moto lacks, or to inject error codes) to
    # the clients built here: client_hook(client, "send" | "account"). Production leaves it None.
    client_hook: Callable[[Any, str], None] | None = None
    depth = 1

    def __init__(self, config: SesConfig, concurrency: int = 8) -> None:
        self.name = config.name
        self.config = config
        session = boto3.session.Session(region_name=config.region) if config.region else boto3.session.Session()
        retries = Config(retries={"total_max_attempts": 1, "mode": "standard"}, max_pool_connections=max(10, config.threads),
                         connect_timeout=10, read_timeout=30)
        self.client = session.client("sesv2", endpoint_url=config.endpoint_url, config=retries)
        # A separate client for the account: tests stub GetAccount (which moto lacks) without touching sends.
        self.account_client = session.client("sesv2", endpoint_url=config.endpoint_url, config=retries)
        if SesProvider.client_hook is not None:
            SesProvider.client_hook(self.client, "send")
            SesProvider.client_hook(self.account_client, "account")
        self.pool = ThreadPoolExecutor(max_workers=config.threads, thread_name_prefix="ses")
        self.quota: Quota | None = None
        self.sent = 0
        self.started = dt.datetime.now(dt.UTC)
        self.rejections = Wave(REJECT_WAVE, REJECT_WAVE)

    # --- limits, read once before the first send ---

    def read_quota(self) -> tuple[Quota | None, str | None]:
        """GetAccount; returns the quota, or a warning when it cannot be read (sending goes on, capped by errors)."""
        try:
            acct = self.account_client.get_account()
        except (bx.ClientError, bx.BotoCoreError, NotImplementedError) as e:
            return None, f"could not read the SES account quota ({e}); sending continues, and throttling replies slow it down"
        q = acct.get("SendQuota", {})
        self.quota = Quota(float(q.get("Max24HourSend", -1)), float(q.get("MaxSendRate", 0) or 0),
                           float(q.get("SentLast24Hours", 0)), bool(acct.get("SendingEnabled", True)),
                           str(acct.get("EnforcementStatus", "HEALTHY")))
        return self.quota, None

    def down_reason(self) -> str | None:
        q = self.quota
        if q is None:
            return None
        if not q.enabled:
            return "SES reports SendingEnabled = false for this account"
        if q.enforcement == "SHUTDOWN":
            return "SES enforcement status is SHUTDOWN"
        if q.remaining <= 0:
            return self._quota_message()
        return None

    def _quota_message(self) -> str:
        q = self.quota
        assert q is not None
        when = (self.started + dt.timedelta(hours=24)).strftime("%Y-%m-%d %H:%M UTC")
        return (f"the SES 24-hour quota is used up ({q.max_24h:.0f} per 24 h; {q.sent_24h:.0f} were already sent when this "
                f"run started, {self.sent} by this run); quota frees as sends age out of the rolling window, fully by {when}")

    async def prepare(self) -> Readiness:
        quota, warning = await asyncio.get_running_loop().run_in_executor(self.pool, self.read_quota)
        if quota is None:
            return Readiness(notes=(warning or "",))
        left = "unlimited" if quota.max_24h < 0 else f"{quota.remaining:.0f} of {quota.max_24h:.0f}"
        note = f"SES quota: {left} left in the rolling 24 hours; at most {quota.max_rate:g} messages/s"
        return Readiness(max_rate=quota.max_rate or None, notes=(note,), down=self.down_reason())

    async def probe(self) -> str:
        """GetAccount with the campaign's credentials: the account answers, may send, and has quota left."""
        quota, warning = await asyncio.get_running_loop().run_in_executor(self.pool, self.read_quota)
        if quota is None:
            raise ConfigError(f"[providers.{self.name}] {warning}")
        if (down := self.down_reason()) is not None:
            raise ConfigError(f"[providers.{self.name}] {down}")
        left = "unlimited" if quota.max_24h < 0 else f"{quota.remaining:.0f} of {quota.max_24h:.0f}"
        return f"SES account answers: sending enabled, {left} left in 24 hours, at most {quota.max_rate:g}/s"

    # --- sending ---

    def _send_sync(self, message: Message) -> Outcome:
        args: dict[str, Any] = {
            "FromEmailAddress": message.sender,
            "Destination": {"ToAddresses": [message.recipient]},
            "Content": {"Raw": {"Data": message.data}},
            "EmailTags": [{"Name": k, "Value": v} for k, v in message.tags.items()],
        }
        if self.config.configuration_set:
            args["ConfigurationSetName"] = self.config.configuration_set
        try:
            reply = self.client.send_email(**args)
        except (bx.ClientError, bx.BotoCoreError) as e:
            return classify_error(e)
        return Outcome(Kind.ACCEPTED, detail="accepted by SES", provider_message_id=str(reply["MessageId"]))

    async def send(self, message: Message, ready: Ready = None) -> Outcome:
        if self.quota is not None and self.quota.remaining - self.sent <= 0:
            return Outcome(Kind.PROVIDER_DOWN, detail=self._quota_message())
        if ready is not None:
            try:
                await ready()
            except Withdrawn:
                return WITHDRAWN
        outcome = await asyncio.get_running_loop().run_in_executor(self.pool, self._send_sync, message)
        if outcome.kind is Kind.ACCEPTED:
            self.sent += 1
        rejected = outcome.kind is Kind.PERMANENT and outcome.detail.startswith("MessageRejected")
        if self.rejections.add(rejected):
            return Outcome(Kind.PROVIDER_DOWN, detail=f"{REJECT_WAVE} messages in a row rejected by SES; last: {outcome.detail}")
        return dataclasses.replace(outcome, wave_suspect=True) if rejected else outcome

    async def aclose(self) -> None:
        self.pool.shutdown(wait=True)
