"""The ilert REST client: three calls, one status classifier, errors as outcomes.

Every failure leaves this module as `IlertCallFailed`, which carries the
*retry* or *rejected* outcome that the HTTP status or error implies. Exceptions from requests are
translated here and nowhere else. The API key is sent in the Authorization
header only; it never appears in an exception text.
"""

from __future__ import annotations

import email.utils
import enum
import re
import time
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from policy_sync import __version__
from policy_sync import outcomes
from policy_sync.outcomes import Outcome, OutcomeKind

DEFAULT_CONNECT_TIMEOUT_S = 3.05
DEFAULT_READ_TIMEOUT_S = 10.0
HTTP_POOL_SIZE = 32
USER_AGENT = f"policy-sync/{__version__}"
# Longest Retry-After honoured; a larger value is clamped so that a typo in a
# proxy header cannot park a message for days.
RETRY_AFTER_MAX_S = 3600.0
API_MESSAGE_MAX_CHARS = 300

# Attempts of one call within a single sync, for failures that are usually
# brief: 5xx, 408, 429 and a refused or reset connection. Timeouts are not
# repeated, because three read timeouts in a row would outlast a Lambda
# invocation. The waits double from CALL_RETRY_FIRST_WAIT_S; a Retry-After
# above CALL_RETRY_MAX_WAIT_S ends the attempts, and the message's own retry
# (buffer, Kafka seek-back, Lambda) waits for it instead.
DEFAULT_CALL_ATTEMPTS = 3
CALL_RETRY_FIRST_WAIT_S = 0.25
CALL_RETRY_MAX_WAIT_S = 2.0
REPEATABLE_REASONS = frozenset({outcomes.API_UNAVAILABLE, outcomes.CONNECTION_FAILED})


class Call(str, enum.Enum):
    """The API calls the client makes; a 404 means something different for each."""

    SEARCH_USER = "search_user"
    RESOLVE_POLICY = "resolve_policy"
    UPDATE_LEVEL = "update_level"


def classify_status(status: int, call: Call) -> tuple[OutcomeKind | None, str | None]:
    """Decide what an HTTP status means: (None, None) to go on, else the outcome kind and reason.

    404 from a resolve call means the user or routing key does not exist.
    401 and 403 are retried because a bad key must not throw away every
    update while an operator fixes it. 408, 429 and 5xx are transient.
    Any other 4xx is the API rejecting the request as sent. Informational
    and redirect statuses are unexpected here and are retried.
    """
    if 200 <= status < 300:
        return None, None
    if status == 404 and call is Call.SEARCH_USER:
        return OutcomeKind.REJECTED, outcomes.UNKNOWN_USER
    if status == 404 and call is Call.RESOLVE_POLICY:
        return OutcomeKind.REJECTED, outcomes.UNKNOWN_ROUTING_KEY
    if status in (401, 403):
        return OutcomeKind.RETRY, outcomes.AUTH_FAILED
    if status in (408, 429) or 500 <= status < 600:
        return OutcomeKind.RETRY, outcomes.API_UNAVAILABLE
    if 400 <= status < 500:
        return OutcomeKind.REJECTED, outcomes.API_REJECTED
    return OutcomeKind.RETRY, outcomes.BAD_RESPONSE


def parse_retry_after(value: str | None, now_s: float | None = None) -> float | None:
    """Parse a Retry-After header (delay in seconds or an HTTP date) into seconds from now."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), RETRY_AFTER_MAX_S)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment is None or moment.tzinfo is None:
        return None
    now_s = time.time() if now_s is None else now_s
    return min(max(moment.timestamp() - now_s, 0.0), RETRY_AFTER_MAX_S)


class IlertCallFailed(Exception):
    """An API call that did not succeed; `outcome` is the *retry* or *rejected* outcome it leads to."""

    def __init__(self, outcome: Outcome, status: int | None = None):
        super().__init__(f"{outcome.kind.value} ({outcome.reason}): {outcome.detail}")
        self.outcome = outcome
        self.status = status


class IlertClient:
    """A pooled, timeout-bounded client for the ilert calls the sync needs."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        call_attempts: int = DEFAULT_CALL_ATTEMPTS,
        session: requests.Session | None = None,
    ):
        key = api_key.strip()
        if key[:6].lower() == "bearer" and (len(key) == 6 or key[6].isspace()):
            key = key[6:].strip()
        if not key:
            raise ValueError("the ilert API key is empty; set ILERT_API_KEY or the API key secret")
        self.base_url = base_url.rstrip("/")
        self.timeout_s = (connect_timeout_s, read_timeout_s)
        self.call_attempts = max(1, call_attempts)
        self._session = session or self._new_session()
        self._headers = {
            "Authorization": f"Bearer {key}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    def __repr__(self) -> str:
        return f"IlertClient(base_url={self.base_url!r})"

    @staticmethod
    def _new_session() -> requests.Session:
        session = requests.Session()
        # Retries are the caller's business (buffer, Kafka seek-back); a hidden
        # urllib3 retry would repeat a PUT behind the ordering store's back.
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=HTTP_POOL_SIZE, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def close(self) -> None:
        """Close the pooled connections."""
        self._session.close()

    def find_user_id(self, email_address: str) -> int:
        """Return the id of the user with this email (POST /api/users/search-email)."""
        # The API's error text may quote the email, which is personal data and
        # must not reach an outcome detail logged above debug level.
        user = self._call(
            Call.SEARCH_USER,
            "POST",
            "/api/users/search-email",
            json_body={"email": email_address},
            redact=email_address,
        )
        user_id = user.get("id") if isinstance(user, dict) else None
        if not _is_int(user_id):
            raise self._bad_response(Call.SEARCH_USER, "the user has no integer id")
        return user_id

    def resolve_policy(self, routing_key: str) -> dict[str, Any]:
        """Return the escalation policy behind `routing_key`, with its id and escalation rules."""
        policy = self._call(
            Call.RESOLVE_POLICY,
            "GET",
            "/api/escalation-policies/resolve",
            params={"routing-key": routing_key},
        )
        if not isinstance(policy, dict) or not _is_int(policy.get("id")):
            raise self._bad_response(Call.RESOLVE_POLICY, "the policy has no integer id")
        if not isinstance(policy.get("escalationRules"), list):
            raise self._bad_response(Call.RESOLVE_POLICY, "the policy has no escalationRules list")
        return policy

    def update_level(self, policy_id: int, level: int, rule: dict[str, Any]) -> None:
        """Replace level `level` of policy `policy_id` with `rule` (PUT .../levels/{level})."""
        self._call(
            Call.UPDATE_LEVEL,
            "PUT",
            f"/api/escalation-policies/{policy_id}/levels/{level}",
            json_body=rule,
            allow_empty=True,
        )

    def _call(
        self,
        call: Call,
        method: str,
        path: str,
        *,
        params: dict | None = None,
        json_body: Any = None,
        allow_empty: bool = False,
        redact: str | None = None,
    ) -> Any:
        """Make one API call, repeating it briefly on a transient failure; raise IlertCallFailed."""
        for attempt in range(1, self.call_attempts + 1):
            try:
                return self._call_once(call, method, path, params, json_body, allow_empty, redact)
            except IlertCallFailed as failure:
                wait_s = self._repeat_wait_s(failure.outcome, attempt)
                if wait_s is None:
                    raise
            time.sleep(wait_s)
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _repeat_wait_s(self, outcome: Outcome, attempt: int) -> float | None:
        """Return how long to wait before the next attempt, or None when the failure is final here."""
        if attempt >= self.call_attempts or outcome.reason not in REPEATABLE_REASONS:
            return None
        wait_s = CALL_RETRY_FIRST_WAIT_S * 2 ** (attempt - 1)
        if outcome.retry_after_s is not None:
            if outcome.retry_after_s > CALL_RETRY_MAX_WAIT_S:
                return None
            wait_s = max(wait_s, outcome.retry_after_s)
        return min(wait_s, CALL_RETRY_MAX_WAIT_S)

    def _call_once(
        self,
        call: Call,
        method: str,
        path: str,
        params: dict | None,
        json_body: Any,
        allow_empty: bool,
        redact: str | None,
    ) -> Any:
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                params=params,
                json=json_body,
                headers=self._headers,
                timeout=self.timeout_s,
                allow_redirects=False,
            )
        except requests.Timeout as error:
            raise IlertCallFailed(
                outcomes.retry(outcomes.TIMED_OUT, f"{call.value}: {type(error).__name__}: {_describe(error)}")
            ) from None
        except requests.RequestException as error:
            raise IlertCallFailed(
                outcomes.retry(outcomes.CONNECTION_FAILED, f"{call.value}: {type(error).__name__}: {_describe(error)}")
            ) from None

        kind, reason = classify_status(response.status_code, call)
        if kind is not None:
            raise IlertCallFailed(self._failure_outcome(call, response, kind, reason, redact), response.status_code)
        if allow_empty and not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise self._bad_response(call, f"HTTP {response.status_code} with a body that is not JSON") from None

    @staticmethod
    def _failure_outcome(
        call: Call, response: requests.Response, kind: OutcomeKind, reason: str, redact: str | None
    ) -> Outcome:
        detail = f"{call.value}: HTTP {response.status_code}: {_api_message(response, redact)}"
        if reason == outcomes.AUTH_FAILED:
            detail += "; check the ilert API key (it may be wrong, expired or lack permission)"
        retry_after_s = parse_retry_after(response.headers.get("Retry-After"))
        return Outcome(kind, reason, detail, retry_after_s=retry_after_s if kind is OutcomeKind.RETRY else None)

    @staticmethod
    def _bad_response(call: Call, what: str) -> IlertCallFailed:
        return IlertCallFailed(outcomes.retry(outcomes.BAD_RESPONSE, f"{call.value}: {what}"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _api_message(response: requests.Response, redact: str | None = None) -> str:
    """Return the API's error message from a JSON error body, else the start of the body.

    Occurrences of `redact` are replaced before blanks are collapsed, so an
    email with unusual blanks in it is still found.
    """
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        text = body["message"]
    else:
        text = response.text or response.reason or ""
    if redact:
        text = re.sub(re.escape(redact), "<email>", text, flags=re.IGNORECASE)
    text = " ".join(text.split())
    return text[:API_MESSAGE_MAX_CHARS] or "(no message)"


def _describe(error: Exception) -> str:
    """Describe a requests exception in one line; its text names the URL, never the headers."""
    return " ".join(str(error).split())[:API_MESSAGE_MAX_CHARS]


__all__ = [
    "Call",
    "IlertCallFailed",
    "IlertClient",
    "classify_status",
    "parse_retry_after",
]
