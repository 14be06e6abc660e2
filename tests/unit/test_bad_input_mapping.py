"""Every hostile corpus payload through `map_message`: an outcome with a reason, never an exception."""

import pytest

from policy_sync import outcomes
from policy_sync.mapping import Assignment, map_message
from policy_sync.outcomes import Outcome, OutcomeKind
from tests.corpus.hostile import (
    KNOWN_EMAIL,
    KNOWN_ROUTING_KEY,
    LEVEL_COUNT,
    MQTT_HUGE_PAYLOAD_BYTES,
    corpus_seed,
    corpus_settings,
    good_payload,
    hostile_payloads,
)

CORPUS = hostile_payloads()
SETTINGS = corpus_settings()
MAPPING_ENTRIES = [entry for entry in CORPUS if entry.stage == "mapping"]
SYNC_ENTRIES = [entry for entry in CORPUS if entry.stage == "sync"]


def entry_id(entry) -> str:
    return entry.name


def test_corpus_has_at_least_200_entries():
    assert len(CORPUS) >= 200


def test_corpus_is_deterministic():
    rebuilt = hostile_payloads.__wrapped__()

    assert [(entry.name, entry.payload) for entry in rebuilt] == [(entry.name, entry.payload) for entry in CORPUS]


def test_corpus_entries_end_rejected_or_deliberately_filtered():
    kinds = {entry.kind for entry in CORPUS}
    filtered_names = [entry.name for entry in CORPUS if entry.kind is OutcomeKind.FILTERED]

    assert kinds <= {OutcomeKind.REJECTED, OutcomeKind.FILTERED}
    assert all(name.startswith(("filter_", "long_filter", "surrogate_at_filter")) for name in filtered_names)


def test_corpus_contains_payload_over_10_mb():
    assert max(len(entry.payload) for entry in CORPUS) >= MQTT_HUGE_PAYLOAD_BYTES


def test_good_payload_maps_to_known_assignment():
    assert map_message(good_payload(), SETTINGS) == Assignment(KNOWN_EMAIL, KNOWN_ROUTING_KEY, 1)


@pytest.mark.parametrize("entry", MAPPING_ENTRIES, ids=entry_id)
def test_mapping_stage_payload_gives_expected_outcome(entry):
    result = map_message(entry.payload, SETTINGS)

    assert isinstance(result, Outcome), f"{entry.name} mapped to {result!r}"
    assert result.kind is entry.kind
    assert result.reason == entry.reason, result.detail
    assert result.detail, "an outcome must explain itself in its detail"
    assert KNOWN_EMAIL not in result.detail


@pytest.mark.parametrize("entry", SYNC_ENTRIES, ids=entry_id)
def test_sync_stage_payload_is_unapplicable_assignment(entry):
    seed = corpus_seed()
    known_emails = {user["email"].lower() for user in seed["users"]}
    known_routing_keys = {policy["routingKey"] for policy in seed["policies"]}

    result = map_message(entry.payload, SETTINGS)

    assert isinstance(result, Assignment), f"{entry.name} mapped to {result!r}"
    # sync resolves the user first, then the routing key, and then checks the level.
    # The emulator matches emails case-insensitively.
    if result.email.lower() not in known_emails:
        predicted = outcomes.UNKNOWN_USER
    elif result.routing_key not in known_routing_keys:
        predicted = outcomes.UNKNOWN_ROUTING_KEY
    elif result.level >= LEVEL_COUNT:
        predicted = outcomes.NO_SUCH_LEVEL
    else:
        predicted = "applied"
    assert predicted == entry.reason, f"{entry.name} maps to {result!r}"
