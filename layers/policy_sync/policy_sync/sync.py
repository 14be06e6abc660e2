"""Apply one assignment in ilert: resolve user and policy, check the level, skip no-ops, PUT.

The ordering store is claimed before any API call. An assignment received
earlier than the last applied one for the same routing key and level thus
ends as *superseded*, and two invocations never update one level at the
same time.
"""

from __future__ import annotations

import copy
import logging
import uuid
from typing import TYPE_CHECKING, Any

from policy_sync import outcomes
from policy_sync.ilert import IlertCallFailed
from policy_sync.ordering import ClaimResult
from policy_sync.outcomes import Outcome, OutcomeKind

if TYPE_CHECKING:
    from policy_sync.mapping import Assignment
    from policy_sync.runtime import Runtime

logger = logging.getLogger(__name__)

# How long a *retry* for a level claimed by another invocation waits at least.
CLAIM_BUSY_RETRY_AFTER_S = 1.0


def sync_assignment(assignment: Assignment, runtime: Runtime, received_at_ms: int, sequence: int = 0) -> Outcome:
    """Make level `assignment.level` of the policy behind its routing key this user's alone.

    `received_at_ms` and `sequence` are the message's position for the
    ordering store (see `policy_sync.ordering`).
    """
    context = {"routing_key": assignment.routing_key, "level": assignment.level}
    ordering = runtime.ordering
    if ordering is None:
        return apply_assignment(assignment, runtime).with_context(**context)

    owner = uuid.uuid4().hex
    try:
        claim = ordering.claim(assignment.routing_key, assignment.level, received_at_ms, owner, sequence)
    except Exception as error:  # any storage failure means "try again later"
        logger.debug("ordering claim failed", exc_info=True)
        return outcomes.retry(outcomes.STORE_FAILED, f"ordering store claim failed: {type(error).__name__}: {error}", **context)

    if claim is ClaimResult.SUPERSEDED:
        detail = f"an assignment received after this one ({received_at_ms} ms, sequence {sequence}) was already applied"
        return Outcome(OutcomeKind.SUPERSEDED, outcomes.NEWER_APPLIED, detail, **context)
    if claim is ClaimResult.BUSY:
        return outcomes.retry(
            outcomes.CLAIM_BUSY,
            "another invocation is updating this level",
            retry_after_s=CLAIM_BUSY_RETRY_AFTER_S,
            **context,
        )

    outcome = None
    try:
        outcome = apply_assignment(assignment, runtime).with_context(**context)
        return outcome
    finally:
        is_in_place = outcome is not None and outcome.kind in (OutcomeKind.APPLIED, OutcomeKind.UNCHANGED)
        try:
            ordering.release(
                assignment.routing_key, assignment.level, owner, received_at_ms if is_in_place else None, sequence
            )
        except Exception:
            # The level is already updated and cannot be rolled back; the claim
            # expires after CLAIM_TTL_S. Until then this level reports busy.
            logger.error("ordering release failed", exc_info=True, extra=context)


def apply_assignment(assignment: Assignment, runtime: Runtime, use_cache: bool = True) -> Outcome:
    """Resolve, check and update without the ordering store; return applied, unchanged, rejected or retry."""
    client = runtime.client
    try:
        user_id, is_cached = resolve_user_id(assignment.email, runtime, use_cache)
        policy = client.resolve_policy(assignment.routing_key)
    except IlertCallFailed as failure:
        return failure.outcome

    policy_id = policy["id"]
    rules = policy["escalationRules"]
    if assignment.level >= len(rules):
        detail = (
            f"policy {policy_id} has {len(rules)} levels (0 to {len(rules) - 1}); "
            f"level {assignment.level} does not exist and is never created"
        )
        return outcomes.rejected(outcomes.NO_SUCH_LEVEL, detail, policy_id=policy_id)
    rule = rules[assignment.level]
    if not isinstance(rule, dict):
        return outcomes.retry(outcomes.BAD_RESPONSE, f"level {assignment.level} of policy {policy_id} is not an object")

    if has_only_user(rule, user_id):
        return Outcome(OutcomeKind.UNCHANGED, None, f"level already has only user {user_id}", policy_id=policy_id)

    try:
        client.update_level(policy_id, assignment.level, build_level_update(rule, user_id))
    except IlertCallFailed as failure:
        if is_cached and failure.outcome.reason == outcomes.API_REJECTED:
            # The cached id may belong to a user deleted since: look the email up once more.
            runtime.user_cache.invalidate(assignment.email)
            return apply_assignment(assignment, runtime, use_cache=False)
        return failure.outcome.with_context(policy_id=policy_id)
    return Outcome(OutcomeKind.APPLIED, None, f"level now has only user {user_id}", policy_id=policy_id)


def resolve_user_id(email_address: str, runtime: Runtime, use_cache: bool = True) -> tuple[int, bool]:
    """Return the user id for `email_address` and whether it came from the cache."""
    cached_id = runtime.user_cache.get(email_address) if use_cache else None
    if cached_id is not None:
        return cached_id, True
    user_id = runtime.client.find_user_id(email_address)
    runtime.user_cache.put(email_address, user_id)
    return user_id, False


def has_only_user(rule: dict[str, Any], user_id: int) -> bool:
    """True when the level's user list is exactly this one user."""
    users = rule.get("users")
    if not isinstance(users, list) or len(users) != 1:
        return False
    only = users[0]
    return isinstance(only, dict) and only.get("id") == user_id


def build_level_update(rule: dict[str, Any], user_id: int) -> dict[str, Any]:
    """Return the level as it was, with its users replaced by this user and the legacy `user` field dropped.

    Everything else, escalationTimeout, schedules and teams among it, is kept
    unchanged.
    """
    update = copy.deepcopy(rule)
    update.pop("user", None)
    update["users"] = [{"id": user_id}]
    return update
