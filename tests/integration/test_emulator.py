"""The ilert API emulator over real HTTP, started as its own process."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from ilert_emulator.server import EmulatorServer
from ilert_emulator.testing import EmulatorProcess, make_seed

DEMO_SEED = Path(__file__).resolve().parents[2] / "examples" / "demo-seed.json"
API_KEY = "demo-key"
TIMEOUT_S = 5


@pytest.fixture(scope="module")
def emulator():
    with EmulatorProcess(DEMO_SEED) as process:
        yield process


@pytest.fixture
def fresh(emulator):
    """The module's emulator with the demo seed loaded again: no journal, no faults."""
    emulator.load_seed(json.loads(DEMO_SEED.read_text()))
    return emulator


def call(emulator, method, path, key=API_KEY, **kwargs):
    headers = {"Accept": "application/json", "User-Agent": "policy-sync-tests/1"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    return requests.request(method, f"{emulator.url}{path}", headers=headers, timeout=TIMEOUT_S, **kwargs)


def search(emulator, email, key=API_KEY):
    return call(emulator, "POST", "/api/users/search-email", key=key, json={"email": email})


def resolve(emulator, routing_key, key=API_KEY):
    return call(emulator, "GET", "/api/escalation-policies/resolve", key=key, params={"routing-key": routing_key})


def put_level(emulator, policy_id, level, rule, key=API_KEY):
    return call(emulator, "PUT", f"/api/escalation-policies/{policy_id}/levels/{level}", key=key, json=rule)


# Authentication


def test_missing_key_gives_401_json(fresh):
    response = search(fresh, "oncall@example.com", key=None)
    assert response.status_code == 401
    assert response.json()["status"] == 401
    assert response.json()["code"] == "UNAUTHORIZED"


def test_wrong_key_gives_401(fresh):
    assert resolve(fresh, "powerplant", key="wrong").status_code == 401


def test_api_key_change_takes_effect(fresh):
    fresh.set_api_key("rotated")
    assert resolve(fresh, "powerplant").status_code == 401
    assert resolve(fresh, "powerplant", key="rotated").status_code == 200


def test_api_key_argument_overrides_seed():
    with EmulatorProcess(DEMO_SEED, api_key="from-flag") as process:
        assert resolve(process, "powerplant").status_code == 401
        assert resolve(process, "powerplant", key="from-flag").status_code == 200


# Users


def test_search_email_finds_user(fresh):
    response = search(fresh, "oncall@example.com")
    assert response.status_code == 200
    assert response.json() == {"id": 1, "email": "oncall@example.com", "firstName": "On", "lastName": "Call"}


def test_search_email_ignores_case(fresh):
    response = search(fresh, "OnCall@Example.COM")
    assert response.status_code == 200
    assert response.json()["id"] == 1


def test_search_unknown_email_gives_404(fresh):
    response = search(fresh, "nobody@example.com")
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"
    assert "nobody@example.com" in response.json()["message"]


@pytest.mark.parametrize("body", [b"not json", b"[]", b'{"email": 5}', b"{}", b""])
def test_search_with_bad_body_gives_400(fresh, body):
    response = call(fresh, "POST", "/api/users/search-email", data=body)
    assert response.status_code == 400
    assert response.json()["status"] == 400


# Policies


def test_resolve_returns_policy(fresh):
    response = resolve(fresh, "powerplant")
    assert response.status_code == 200
    policy = response.json()
    assert policy["id"] == 10
    assert policy["routingKey"] == "powerplant"
    assert [rule["escalationTimeout"] for rule in policy["escalationRules"]] == [5, 15, 30]


def test_resolve_expands_rule_users(fresh):
    rule = resolve(fresh, "powerplant").json()["escalationRules"][1]
    assert rule["users"] == [
        {"id": 2, "email": "shift.lead@example.com", "firstName": "Shift", "lastName": "Lead"}
    ]


def test_resolve_unknown_key_gives_404(fresh):
    response = resolve(fresh, "nowhere")
    assert response.status_code == 404
    assert response.json()["code"] == "NOT_FOUND"


def test_resolve_without_parameter_gives_400(fresh):
    assert call(fresh, "GET", "/api/escalation-policies/resolve").status_code == 400


def test_get_policy_by_id(fresh):
    response = call(fresh, "GET", "/api/escalation-policies/11")
    assert response.status_code == 200
    assert response.json()["routingKey"] == "powerplantthree50"


def test_get_unknown_policy_gives_404(fresh):
    assert call(fresh, "GET", "/api/escalation-policies/999").status_code == 404
    assert call(fresh, "GET", "/api/escalation-policies/abc").status_code == 404


def test_unknown_api_route_gives_404(fresh):
    assert call(fresh, "GET", "/api/incidents").status_code == 404


# Level updates


def test_put_level_is_visible_in_next_get(fresh):
    before = resolve(fresh, "powerplant").json()
    rule = dict(before["escalationRules"][1], users=[{"id": 1}])

    response = put_level(fresh, 10, 1, rule)

    assert response.status_code == 200
    assert response.json()["users"][0]["email"] == "oncall@example.com"
    after = call(fresh, "GET", "/api/escalation-policies/10").json()
    assert after["escalationRules"][1]["users"] == [
        {"id": 1, "email": "oncall@example.com", "firstName": "On", "lastName": "Call"}
    ]
    assert after["escalationRules"][1]["escalationTimeout"] == 15
    assert after["escalationRules"][1]["schedules"] == [{"id": 501}]
    assert after["escalationRules"][1]["teams"] == [{"id": 7}]
    assert after["escalationRules"][0] == before["escalationRules"][0]
    assert after["escalationRules"][2] == before["escalationRules"][2]
    assert after["name"] == before["name"]
    assert resolve(fresh, "powerplant").json() == after
    assert fresh.level("powerplant", 1) == after["escalationRules"][1]


def test_put_missing_level_gives_400_and_adds_none(fresh):
    response = put_level(fresh, 10, 3, {"escalationTimeout": 5, "users": [{"id": 1}]})
    assert response.status_code == 400
    assert "3 levels" in response.json()["message"]
    assert len(fresh.policy(10)["escalationRules"]) == 3


def test_put_negative_level_gives_400(fresh):
    assert put_level(fresh, 10, -1, {"users": [{"id": 1}]}).status_code == 400


def test_put_unknown_user_gives_400(fresh):
    before = fresh.level("powerplant", 0)
    response = put_level(fresh, 10, 0, {"escalationTimeout": 5, "users": [{"id": 99}]})
    assert response.status_code == 400
    assert "99" in response.json()["message"]
    assert fresh.level("powerplant", 0) == before


def test_put_non_object_body_gives_400(fresh):
    assert put_level(fresh, 10, 0, [{"id": 1}]).status_code == 400
    assert call(fresh, "PUT", "/api/escalation-policies/10/levels/0", data=b"{").status_code == 400


def test_put_unknown_policy_gives_404(fresh):
    assert put_level(fresh, 999, 0, {"users": [{"id": 1}]}).status_code == 404


# Journal


def test_journal_records_requests_in_order(fresh):
    search(fresh, "oncall@example.com")
    resolve(fresh, "powerplant", key="wrong")
    put_level(fresh, 10, 1, {"escalationTimeout": 15, "users": [{"id": 1}]})

    entries = fresh.journal()

    assert [entry["method"] for entry in entries] == ["POST", "GET", "PUT"]
    assert [entry["status"] for entry in entries] == [200, 401, 200]
    assert [entry["authorization_ok"] for entry in entries] == [True, False, True]
    assert entries[0]["path"] == "/api/users/search-email"
    assert entries[0]["body"] == {"email": "oncall@example.com"}
    assert entries[0]["headers"]["Accept"] == "application/json"
    assert entries[0]["headers"]["User-Agent"] == "policy-sync-tests/1"
    assert entries[0]["headers"]["Content-Type"] == "application/json"
    assert entries[1]["query"] == {"routing-key": "powerplant"}
    assert entries[1]["body"] is None
    assert entries[2]["body"]["users"] == [{"id": 1}]
    assert entries[0]["seq"] < entries[1]["seq"] < entries[2]["seq"]
    assert entries[0]["timestamp"] <= entries[2]["timestamp"]
    assert all(entry["fault"] is None for entry in entries)


def test_journal_never_contains_key(fresh):
    search(fresh, "oncall@example.com")
    resolve(fresh, "powerplant", key="wrong-secret")
    assert API_KEY not in json.dumps(fresh.journal())
    assert "wrong-secret" not in json.dumps(fresh.journal())


def test_journal_clear_and_control_calls_not_journaled(fresh):
    resolve(fresh, "powerplant")
    fresh.clear_journal()
    fresh.state()
    fresh.faults()
    assert fresh.journal() == []


# Faults


def test_fault_with_count_fires_that_often(fresh):
    rule = fresh.add_fault(status=503, count=2)

    statuses = [resolve(fresh, "powerplant").status_code for _ in range(3)]

    assert statuses == [503, 503, 200]
    assert [entry["status"] for entry in fresh.journal()] == [503, 503, 200]
    assert fresh.journal()[0]["fault"]["rule_ids"] == [rule["id"]]
    assert fresh.faults()[0]["remaining"] == 0
    assert fresh.faults()[0]["fired"] == 2


def test_fault_does_not_change_state(fresh):
    fresh.add_fault(status=500, count=1, method="PUT")
    before = fresh.level("powerplant", 1)
    response = put_level(fresh, 10, 1, {"escalationTimeout": 15, "users": [{"id": 1}]})
    assert response.status_code == 500
    assert response.json()["code"] == "INTERNAL_SERVER_ERROR"
    assert fresh.level("powerplant", 1) == before


def test_fault_filters_on_method_and_path(fresh):
    fresh.add_fault(status=502, method="PUT", path_prefix="/api/escalation-policies/11/")
    assert put_level(fresh, 10, 0, {"users": [{"id": 1}]}).status_code == 200
    assert call(fresh, "GET", "/api/escalation-policies/11").status_code == 200
    assert put_level(fresh, 11, 0, {"users": [{"id": 1}]}).status_code == 502


def ratio_statuses(emulator, seed, calls=60):
    emulator.clear_faults()
    emulator.add_fault(status=503, ratio=0.3, seed=seed)
    return [resolve(emulator, "powerplant").status_code for _ in range(calls)]


def test_fault_ratio_with_seed_repeats(fresh):
    first = ratio_statuses(fresh, seed=42)
    second = ratio_statuses(fresh, seed=42)

    assert first == second
    assert set(first) == {200, 503}
    assert 5 <= first.count(503) <= 35


def test_fault_429_sends_retry_after(fresh):
    fresh.add_fault(status=429, retry_after=7, count=1)
    response = search(fresh, "oncall@example.com")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response.json()["code"] == "TOO_MANY_REQUESTS"


def test_fault_body_replaces_json(fresh):
    fresh.add_fault(status=200, body="<html>maintenance</html>", count=1)
    response = resolve(fresh, "powerplant")
    assert response.status_code == 200
    assert response.text == "<html>maintenance</html>"


def test_fault_latency_delays_response(fresh):
    fresh.add_fault(latency_ms=400, count=1)

    started = time.monotonic()
    slow = resolve(fresh, "powerplant")
    slow_s = time.monotonic() - started

    assert slow.status_code == 200
    assert slow.json()["id"] == 10
    assert slow_s >= 0.4
    assert fresh.journal()[0]["fault"]["latency_ms"] == 400


def test_fault_latency_combines_with_status(fresh):
    fresh.add_fault(latency_ms=300, status=504, count=1)
    started = time.monotonic()
    response = resolve(fresh, "powerplant")
    assert response.status_code == 504
    assert time.monotonic() - started >= 0.3


def test_dropped_connection_raises_connection_error(fresh):
    fresh.add_fault(drop_connection=True, count=1)

    with pytest.raises(requests.ConnectionError):
        search(fresh, "oncall@example.com")

    assert search(fresh, "oncall@example.com").status_code == 200
    assert [entry["status"] for entry in fresh.journal()] == [0, 200]
    assert fresh.journal()[0]["body"] == {"email": "oncall@example.com"}


@pytest.mark.parametrize(
    "rule",
    [
        {},
        {"status": 99},
        {"status": 503, "count": 0},
        {"status": 503, "ratio": 0},
        {"retry_after": 1, "latency_ms": 5},
        {"drop_connection": True, "status": 503},
        {"status": 503, "retry-after": 1},
    ],
)
def test_invalid_fault_rule_gives_400(fresh, rule):
    response = requests.post(f"{fresh.url}/_emulator/faults", json=rule, timeout=TIMEOUT_S)
    assert response.status_code == 400
    assert fresh.faults() == []


def test_clear_faults_removes_rules(fresh):
    fresh.add_fault(status=503)
    fresh.clear_faults()
    assert fresh.faults() == []
    assert resolve(fresh, "powerplant").status_code == 200


# Seeds and process


def test_seed_reload_replaces_state_and_clears(fresh):
    resolve(fresh, "powerplant")
    fresh.add_fault(status=503)

    fresh.load_seed(make_seed(policies=3, users=4, levels=2, api_key="bench-key"))

    assert fresh.journal() == []
    assert fresh.faults() == []
    assert resolve(fresh, "powerplant", key="bench-key").status_code == 404
    policy = resolve(fresh, "key-002", key="bench-key").json()
    assert len(policy["escalationRules"]) == 2
    assert search(fresh, "user-03@example.com", key="bench-key").json()["id"] == 4


def test_invalid_seed_keeps_state(fresh):
    response = requests.post(
        f"{fresh.url}/_emulator/seed",
        json={"users": [], "policies": [{"id": 1, "name": "x", "escalationRules": [{"users": [{"id": 5}]}]}]},
        timeout=TIMEOUT_S,
    )
    assert response.status_code == 400
    assert resolve(fresh, "powerplant").status_code == 200


def test_make_seed_sizes():
    seed = make_seed(policies=100, users=20, levels=3)
    assert len(seed["policies"]) == 100
    assert seed["policies"][0]["routingKey"] == "key-000"
    assert seed["policies"][99]["routingKey"] == "key-099"
    assert seed["users"][0]["email"] == "user-00@example.com"
    assert seed["users"][19]["email"] == "user-19@example.com"
    assert all(len(policy["escalationRules"]) == 3 for policy in seed["policies"])


def test_keep_alive_serves_parallel_clients(fresh):
    def run_client(index):
        with requests.Session() as session:
            session.headers["Authorization"] = f"Bearer {API_KEY}"
            url = f"{fresh.url}/api/escalation-policies/resolve"
            return [session.get(url, params={"routing-key": "powerplant"}, timeout=TIMEOUT_S).status_code for _ in range(25)]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run_client, range(8)))

    assert all(status == 200 for statuses in results for status in statuses)
    assert len(fresh.journal()) == 200


def test_health_returns_ok(fresh):
    response = requests.get(f"{fresh.url}/_emulator/health", timeout=TIMEOUT_S)
    assert response.status_code == 200


def test_process_exits_cleanly_on_sigterm():
    process = EmulatorProcess(DEMO_SEED).start()
    assert process.stop() == 0


def test_ipv6_loopback_serves_api():
    with EmulatorProcess(DEMO_SEED, host="::1") as process:
        assert process.url.startswith("http://[::1]:")
        assert resolve(process, "powerplant").status_code == 200


def test_server_in_thread_serves_api():
    with EmulatorServer(str(DEMO_SEED)) as server:
        response = search(server, "oncall@example.com")
        assert response.status_code == 200
        assert server.emulator.journal.entries()[0]["status"] == 200


def test_non_loopback_host_is_rejected():
    result = subprocess.run(
        [sys.executable, "-m", "ilert_emulator", "--port", "0", "--host", "0.0.0.0", "--seed", str(DEMO_SEED)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S * 2,
    )
    assert result.returncode == 2
    assert "--allow-remote" in result.stderr
    assert result.stdout == ""
