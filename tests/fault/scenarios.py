"""The fault scenarios: real brokers, the emulator over HTTP and the daemon as a subprocess.

Each scenario runs one *case* per consumer mode (Kafka, buffered MQTT,
direct MQTT QoS 1) at the same time. A case has its own emulator, topic,
group or client id, SQLite file and daemon, and publishes assignments whose
correctness can be checked afterwards:

- Routing keys `fault-000`, `fault-001`, ... each get assignments for levels
  0 and 1; level 2 is never addressed and must keep its seeded user.
- Assignments go out in rounds. Round k gives every routing key and level
  the user `shift-k@example.com` (user id k + 1), so the k-th assignment
  for a level names user k. Every level starts with a baseline user that no
  assignment names.
- One producer publishes everything in round order: MQTT QoS 1 from one
  client, Kafka with the routing key as record key, so one level stays in
  one partition.

At the end a case waits until every level shows its newest assignment and
the consumer has nothing left (Kafka offsets committed to the end, the
SQLite buffer empty) and the emulator journal stays unchanged for a moment.
Then it counts four things. `lost` levels are not at their newest
assignment. An `older_over_newer` PUT succeeded with an earlier k than the
previous successful PUT of that level. Dead letters are rows in the daemon's
dead-letter table. Damaged levels had a field other than the users changed,
or are level 2 and were touched at all.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from paho.mqtt.enums import CallbackAPIVersion

from ilert_emulator.testing import EmulatorProcess
from local_runner.store import Database, SqliteBuffer, SqliteDeadLetterSink
from local_runner.testing import RunnerProcess
from tests.services import create_topic, kafka_bootstrap, mqtt_host, mqtt_port, restart_service

API_KEY = "fault-key"
WRONG_API_KEY = "fault-key-rotated"
ROUTING_KEY_FIELD = "routingKey"

LEVELS_SEEDED = 3
LEVELS_ADDRESSED = 2
BASELINE_USER_ID = 100_000
FIRST_POLICY_ID = 2000

KAFKA_PARTITIONS = 8

KAFKA = "kafka"
MQTT_BUFFERED = "mqtt-buffered"
MQTT_DIRECT = "mqtt-direct"
MODES = (KAFKA, MQTT_BUFFERED, MQTT_DIRECT)

# Modes whose daemon runs routing keys in parallel with --concurrency: the
# Kafka handler and the buffer drain. api_chaos runs them once more at this figure.
CONCURRENT_MODES = (KAFKA, MQTT_BUFFERED)
CHAOS_CONCURRENCY = 8

# The emulator journal must stay unchanged this long before a case counts as quiet.
QUIET_S = 2.0
POLL_INTERVAL_S = 0.5
PUBLISH_ACK_TIMEOUT_S = 300.0
MQTT_CONNECT_TIMEOUT_S = 30.0
DAEMON_READY_TIMEOUT_S = 120.0
# How much of the daemon's output a result keeps for failure messages.
OUTPUT_TAIL_CHARS = 6000

# kill9: after a (re)start, wait until the daemon logged an outcome (or this
# long at most), then a random 0.2 s to KILL_JITTER_MAX_S more, then kill.
KILL_PROGRESS_WAIT_MAX_S = 60.0
KILL_JITTER_MAX_S = 1.5

# api_chaos fault rules; the seeds make the draws repeatable per emulator.
CHAOS_FAULTS = (
    {"status": 503, "ratio": 0.30, "seed": 11, "path_prefix": "/api/"},
    {"status": 429, "retry_after": 1, "ratio": 0.10, "seed": 12, "path_prefix": "/api/"},
    {"latency_ms": 2000, "ratio": 0.05, "seed": 13, "path_prefix": "/api/"},
)


@dataclass(frozen=True)
class Load:
    """How many assignments a case publishes, over how many routing keys, spread over how long."""

    assignments: int
    routing_keys: int
    publish_s: float = 0.0


@dataclass(frozen=True)
class ScenarioSize:
    """The load per mode and the scenario's own knobs at one size."""

    loads: dict[str, Load]
    settle_timeout_s: float
    bad_key_s: float = 0.0
    kills: int = 0
    kill_period_s: float = 0.0
    restart_at_s: float = 0.0


SIZES: dict[str, dict[str, ScenarioSize]] = {
    "ci": {
        # Direct MQTT handles one message at a time and backs off up to 60 s
        # per failed attempt, so under this fault rate it runs at full size only.
        "api_chaos": ScenarioSize(
            loads={KAFKA: Load(60, 15), MQTT_BUFFERED: Load(60, 15)},
            settle_timeout_s=240.0,
        ),
        "bad_key": ScenarioSize(
            loads={KAFKA: Load(60, 15, 8.0), MQTT_BUFFERED: Load(60, 15, 8.0), MQTT_DIRECT: Load(60, 15, 8.0)},
            settle_timeout_s=120.0,
            bad_key_s=10.0,
        ),
        "broker_restart": ScenarioSize(
            loads={KAFKA: Load(90, 15, 9.0), MQTT_BUFFERED: Load(90, 15, 9.0), MQTT_DIRECT: Load(90, 15, 9.0)},
            settle_timeout_s=180.0,
            restart_at_s=3.0,
        ),
        "kill9": ScenarioSize(
            loads={KAFKA: Load(90, 15, 10.0), MQTT_BUFFERED: Load(90, 15, 10.0), MQTT_DIRECT: Load(90, 15, 10.0)},
            settle_timeout_s=180.0,
            kills=3,
        ),
    },
    "full": {
        "api_chaos": ScenarioSize(
            loads={KAFKA: Load(1000, 100), MQTT_BUFFERED: Load(1000, 100), MQTT_DIRECT: Load(30, 15)},
            settle_timeout_s=1800.0,
        ),
        "bad_key": ScenarioSize(
            loads={
                KAFKA: Load(1000, 100, 240.0),
                MQTT_BUFFERED: Load(1000, 100, 240.0),
                MQTT_DIRECT: Load(1000, 100, 240.0),
            },
            settle_timeout_s=600.0,
            bad_key_s=300.0,
        ),
        "broker_restart": ScenarioSize(
            loads={
                KAFKA: Load(1000, 100, 60.0),
                MQTT_BUFFERED: Load(1000, 100, 60.0),
                MQTT_DIRECT: Load(1000, 100, 60.0),
            },
            settle_timeout_s=600.0,
            restart_at_s=20.0,
        ),
        "kill9": ScenarioSize(
            loads={
                KAFKA: Load(1000, 100, 120.0),
                MQTT_BUFFERED: Load(1000, 100, 120.0),
                MQTT_DIRECT: Load(1000, 100, 120.0),
            },
            settle_timeout_s=900.0,
            kills=3,
            kill_period_s=120.0,
        ),
    },
}


# The plan: which assignment names which user


@dataclass(frozen=True)
class PlannedAssignment:
    """One message to publish: assignment `index` overall, the `k`-th for its routing key and level."""

    index: int
    routing_key: str
    level: int
    k: int

    @property
    def user_id(self) -> int:
        return user_id_for(self.k)

    @property
    def payload(self) -> bytes:
        message = {
            ROUTING_KEY_FIELD: self.routing_key,
            "data": {"email": email_for(self.k), "shift": self.level},
            "assignment": self.index,
        }
        return json.dumps(message).encode()


def email_for(k: int) -> str:
    return f"shift-{k:04d}@example.com"


def user_id_for(k: int) -> int:
    return k + 1


def k_for_user_id(user_id: int) -> int:
    return user_id - 1


def routing_key_for(index: int) -> str:
    return f"fault-{index:03d}"


def plan_assignments(load: Load) -> list[PlannedAssignment]:
    """Return the assignments in publish order: round by round, each round every routing key and level once."""
    per_round = load.routing_keys * LEVELS_ADDRESSED
    plan = []
    for index in range(load.assignments):
        k, position = divmod(index, per_round)
        level, key_index = divmod(position, load.routing_keys)
        plan.append(PlannedAssignment(index, routing_key_for(key_index), level, k))
    return plan


def build_seed(load: Load) -> dict[str, Any]:
    """Build the emulator seed: one user per round, a baseline user, one policy per routing key."""
    rounds = -(-load.assignments // (load.routing_keys * LEVELS_ADDRESSED))
    users = [
        {"id": user_id_for(k), "email": email_for(k), "firstName": "Shift", "lastName": str(k)} for k in range(rounds)
    ]
    users.append({"id": BASELINE_USER_ID, "email": "baseline@example.com", "firstName": "Base", "lastName": "Line"})
    policies = [
        {
            "id": FIRST_POLICY_ID + key_index,
            "name": f"Fault policy {key_index:03d}",
            "routingKey": routing_key_for(key_index),
            "escalationRules": [
                {
                    "escalationTimeout": 5 * (level + 1),
                    "users": [{"id": BASELINE_USER_ID}],
                    "schedules": [{"id": 5000 + level}],
                    "teams": [{"id": 7000 + level}],
                }
                for level in range(LEVELS_SEEDED)
            ],
        }
        for key_index in range(load.routing_keys)
    ]
    return {"api_key": API_KEY, "users": users, "policies": policies}


# Publishers


class KafkaPublisher:
    """One idempotent Kafka producer; records are keyed by routing key so a level stays in one partition."""

    def __init__(self, topic: str, client_id: str):
        self._topic = topic
        self._lock = threading.Lock()
        self.acked: set[int] = set()
        self.errors: dict[int, str] = {}
        self._producer = KafkaProducer(
            bootstrap_servers=kafka_bootstrap(),
            client_id=client_id,
            acks="all",
            enable_idempotence=True,
            delivery_timeout_ms=int(PUBLISH_ACK_TIMEOUT_S * 1000),
        )

    def send(self, planned: PlannedAssignment) -> None:
        future = self._producer.send(self._topic, key=planned.routing_key.encode(), value=planned.payload)
        future.add_callback(lambda metadata, index=planned.index: self._record_ack(index))
        future.add_errback(lambda error, index=planned.index: self._record_error(index, error))

    def _record_ack(self, index: int) -> None:
        with self._lock:
            self.acked.add(index)

    def _record_error(self, index: int, error: BaseException) -> None:
        with self._lock:
            self.errors[index] = f"{type(error).__name__}: {error}"

    def wait_for_acks(self, sent: int, timeout_s: float) -> None:
        self._producer.flush(timeout=timeout_s)

    def close(self) -> None:
        self._producer.close(timeout=10)


class MqttPublisher:
    """One MQTT client publishing at QoS 1; paho resends unacknowledged messages after a reconnect."""

    def __init__(self, topic: str, client_id: str):
        self._topic = topic
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._acked_mids: set[int] = set()
        self._index_by_mid: dict[int, int] = {}
        self.errors: dict[int, str] = {}
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(1, 2)
        self._client.on_connect = lambda client, userdata, flags, reason_code, properties: self._connected.set()
        self._client.on_publish = self._on_publish
        self._client.connect(mqtt_host(), mqtt_port(), keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(MQTT_CONNECT_TIMEOUT_S):
            self.close()
            raise TimeoutError(f"MQTT publisher {client_id} did not connect within {MQTT_CONNECT_TIMEOUT_S} s")

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._lock:
            self._acked_mids.add(mid)

    def send(self, planned: PlannedAssignment) -> None:
        # While disconnected, publish() returns MQTT_ERR_NO_CONN but keeps the
        # QoS 1 message queued; paho sends it after the reconnect.
        info = self._client.publish(self._topic, planned.payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            self.errors[planned.index] = mqtt.error_string(info.rc)
            return
        with self._lock:
            self._index_by_mid[info.mid] = planned.index

    @property
    def acked(self) -> set[int]:
        with self._lock:
            return {index for mid, index in self._index_by_mid.items() if mid in self._acked_mids}

    def wait_for_acks(self, sent: int, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.acked) + len(self.errors) < sent and time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def drop_mqtt_session(client_id: str) -> None:
    """Connect once with a clean session under `client_id`, so the broker deletes that persistent session."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True, protocol=mqtt.MQTTv311
    )
    try:
        client.connect(mqtt_host(), mqtt_port(), keepalive=10)
        client.loop_start()
        client.disconnect()
        client.loop_stop()
    except OSError:
        pass


# The daemon


@functools.cache
def daemon_supports_concurrency() -> bool:
    """True when `local_runner daemon --help` lists a --concurrency flag."""
    result = subprocess.run(
        [sys.executable, "-m", "local_runner", "daemon", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return "--concurrency" in result.stdout


def parse_outcomes(output: str) -> collections.Counter:
    """Count the outcome lines (`message <outcome>`) the handlers logged as JSON."""
    counts: collections.Counter = collections.Counter()
    for line in output.splitlines():
        if not line.startswith("{") or '"outcome"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("message", "")).startswith("message "):
            counts[record["outcome"]] += 1
    return counts


# Results


@dataclass
class CaseResult:
    """The figures of one case, as printed in the tables."""

    scenario: str
    mode: str
    concurrency: int
    published: int = 0
    publish_errors: int = 0
    levels: int = 0
    correct: int = 0
    lost: int = 0
    older_over_newer: int = 0
    dead_letters: int = 0
    buffered_left: int = 0
    damaged: int = 0
    puts: int = 0
    puts_ok: int = 0
    kills: int = 0
    duration_s: float = 0.0
    settled: bool = False
    outcomes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    output_tail: str = ""

    @property
    def label(self) -> str:
        return self.mode if self.concurrency == 1 else f"{self.mode} x{self.concurrency}"

    @property
    def passed(self) -> bool:
        return (
            self.lost == 0
            and self.older_over_newer == 0
            and self.dead_letters == 0
            and self.publish_errors == 0
            and self.damaged == 0
            and self.published > 0
        )


TABLE_COLUMNS = (
    ("mode", 18),
    ("published", 9),
    ("correct", 9),
    ("lost", 4),
    ("older>newer", 11),
    ("dead letters", 12),
    ("PUTs ok/all", 11),
    ("kills", 5),
    ("duration s", 10),
)


def format_table(scenario: str, results: Iterable[CaseResult]) -> str:
    """Return one scenario's results as a fixed-width table, with outcome counts and notes below."""
    header = "  ".join(name.ljust(width) for name, width in TABLE_COLUMNS)
    lines = [f"== {scenario}", header, "-" * len(header)]
    footer = []
    for result in results:
        cells = (
            result.label,
            str(result.published),
            f"{result.correct}/{result.levels}",
            str(result.lost),
            str(result.older_over_newer),
            str(result.dead_letters),
            f"{result.puts_ok}/{result.puts}",
            str(result.kills),
            f"{result.duration_s:.1f}" + ("" if result.settled else " (not settled)"),
        )
        lines.append("  ".join(cell.ljust(width) for cell, (_, width) in zip(cells, TABLE_COLUMNS)))
        outcome_text = ", ".join(f"{kind} {count}" for kind, count in sorted(result.outcomes.items()))
        footer.append(f"  {result.label}: outcomes logged: {outcome_text or 'none'}")
        footer.extend(f"  {result.label}: {note}" for note in result.notes)
    return "\n".join(lines + footer)


# One case


class Case:
    """One consumer mode of one scenario, with everything it needs of its own."""

    def __init__(self, scenario: str, mode: str, load: Load, workdir: Path, concurrency: int = 1):
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
        self.scenario = scenario
        self.mode = mode
        self.load = load
        self.concurrency = concurrency
        self.run_id = f"{scenario}-{mode}-c{concurrency}-{uuid.uuid4().hex[:8]}"
        self.plan = plan_assignments(load)
        self.seed = build_seed(load)
        self.db_file = workdir / f"{self.run_id}.db3"
        self.topic = f"faults-{self.run_id}" if mode == KAFKA else f"faults/{self.run_id}/shifts"
        self.group_id = f"faults-{self.run_id}"
        self.client_id = f"faults-{self.run_id}-daemon"
        self.emulator = EmulatorProcess(self.seed)
        self.publisher: KafkaPublisher | MqttPublisher | None = None
        self.runner: RunnerProcess | None = None
        self.kills = 0
        self.sent = 0
        self.previous_output = ""
        self.started_at = 0.0
        self.settled_at: float | None = None
        self.settled = False
        self.notes: list[str] = []

    # Setup and teardown

    def start(self) -> Case:
        """Start the emulator, create the topic, start the daemon and wait until it is ready, open the publisher."""
        self.emulator.start()
        if self.mode == KAFKA:
            create_topic(self.topic, partitions=KAFKA_PARTITIONS)
        self.runner = RunnerProcess(self.daemon_args(), self.db_file, API_KEY)
        self.runner.start()
        self.runner.wait_ready(DAEMON_READY_TIMEOUT_S)
        if self.mode == KAFKA:
            self.publisher = KafkaPublisher(self.topic, f"faults-{self.run_id}-publisher")
        else:
            self.publisher = MqttPublisher(self.topic, f"faults-{self.run_id}-publisher")
        return self

    def daemon_args(self) -> list[str]:
        common = ["-v", "--policy_topic", self.topic, "--policy_routing_keys", ROUTING_KEY_FIELD]
        common += ["--ilert_url", self.emulator.url]
        if self.concurrency > 1:
            common += ["--concurrency", str(self.concurrency)]
        if self.mode == KAFKA:
            return [*common, "--kafka_brokers", kafka_bootstrap(), "--kafka_group_id", self.group_id]
        mqtt_args = ["-m", mqtt_host(), "-q", str(mqtt_port()), "-n", self.client_id, "--mqtt_qos", "1"]
        if self.mode == MQTT_BUFFERED:
            mqtt_args.append("--mqtt_buffer")
        return [*common, *mqtt_args]

    def close(self) -> None:
        """Stop the daemon, publisher and emulator, and remove the broker-side topic or session."""
        if self.publisher is not None:
            self.publisher.close()
        if self.runner is not None:
            self.runner.close()
        self.emulator.stop()
        if self.mode == KAFKA:
            delete_kafka_topic(self.topic)
        else:
            drop_mqtt_session(self.client_id)

    def output(self) -> str:
        """Return what every daemon process of this case printed, oldest first."""
        current = self.runner.output() if self.runner is not None else ""
        return self.previous_output + current

    # Publishing

    def publish(self) -> None:
        """Publish the plan in order, spread over `load.publish_s`, then wait for the broker's acknowledgements."""
        assert self.publisher is not None
        self.started_at = time.monotonic()
        interval_s = self.load.publish_s / len(self.plan) if self.load.publish_s else 0.0
        for planned in self.plan:
            send_at = self.started_at + planned.index * interval_s
            delay_s = send_at - time.monotonic()
            if delay_s > 0:
                time.sleep(delay_s)
            self.publisher.send(planned)
            self.sent += 1
        self.publisher.wait_for_acks(self.sent, PUBLISH_ACK_TIMEOUT_S)

    # Faults

    def kill_and_restart(self) -> None:
        """kill -9 the daemon and start it again with the same command line and SQLite file."""
        assert self.runner is not None
        self.runner.kill()
        self.kills += 1
        self.previous_output += self.runner.output()
        restarted = RunnerProcess(self.runner.args, self.db_file, API_KEY, health_port=self.runner.health_port)
        self.runner.close()
        self.runner = restarted
        self.runner.start()

    def kill_repeatedly(self, kills: int, period_s: float, rng: random.Random) -> None:
        """Kill the daemon at least `kills` times and until `period_s` passed, each time once it made progress."""
        started = time.monotonic()
        while self.kills < kills or time.monotonic() - started < period_s:
            deadline = time.monotonic() + KILL_PROGRESS_WAIT_MAX_S
            while '"outcome":' not in self.runner.output() and time.monotonic() < deadline:
                time.sleep(0.1)
            time.sleep(rng.uniform(0.2, KILL_JITTER_MAX_S))
            self.kill_and_restart()
        self.runner.wait_ready(DAEMON_READY_TIMEOUT_S)

    # Settling and checking

    def acked_plan(self) -> list[PlannedAssignment]:
        acked = self.publisher.acked if self.publisher is not None else set()
        return [planned for planned in self.plan if planned.index in acked]

    def expected_k(self) -> dict[tuple[str, int], int]:
        """Return, per routing key and level, the k of the newest assignment the broker acknowledged."""
        expected: dict[tuple[str, int], int] = {}
        for planned in self.acked_plan():
            key = (planned.routing_key, planned.level)
            expected[key] = max(planned.k, expected.get(key, -1))
        return expected

    def count_correct(self, state: dict[str, Any]) -> int:
        expected = self.expected_k()
        correct = 0
        for policy in state["policies"]:
            for level, rule in enumerate(policy["escalationRules"]):
                k = expected.get((policy["routingKey"], level))
                if k is not None and user_ids(rule) == [user_id_for(k)]:
                    correct += 1
        return correct

    def consumer_drained(self) -> bool:
        """True when the consumer has nothing left: offsets committed to the end, or the buffer empty."""
        if self.mode == KAFKA:
            return kafka_group_at_end(self.group_id, self.topic)
        if self.mode == MQTT_BUFFERED:
            return buffer_count(self.db_file) == 0
        return True

    def publish_and_settle(self, timeout_s: float) -> None:
        self.publish()
        self.settle(timeout_s)

    def settle(self, timeout_s: float) -> bool:
        """Wait until every level is at its newest assignment, the consumer is drained and the journal is quiet.

        Returns False (also stored for the result) when the levels were not right
        or the consumer not drained within `timeout_s`.
        """
        deadline = time.monotonic() + timeout_s
        levels = len(self.expected_k())
        while time.monotonic() < deadline:
            if self.count_correct(self.emulator.state()) == levels and self.consumer_drained():
                self.settled_at = time.monotonic()
                break
            time.sleep(POLL_INTERVAL_S)
        else:
            self.settled = False
            return False
        self.settled = True

        journal_length, quiet_since = len(self.emulator.journal()), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(POLL_INTERVAL_S)
            length = len(self.emulator.journal())
            if length != journal_length:
                journal_length, quiet_since = length, time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_S:
                return True
        self.notes.append("the emulator journal was still growing at the deadline")
        return True

    def result(self) -> CaseResult:
        """Check the emulator state, its journal and the SQLite file; return the figures."""
        state = self.emulator.state()
        journal = self.emulator.journal()
        expected = self.expected_k()
        acked = self.acked_plan()

        result = CaseResult(self.scenario, self.mode, self.concurrency)
        result.published = len(acked)
        result.publish_errors = len(self.publisher.errors) + (self.sent - len(acked) - len(self.publisher.errors))
        result.levels = len(expected)
        result.correct = self.count_correct(state)
        result.lost = result.levels - result.correct
        result.damaged = count_damaged(self.seed, state)
        result.older_over_newer = count_older_over_newer(journal)

        puts = [entry for entry in journal if entry["method"] == "PUT"]
        result.puts = len(puts)
        result.puts_ok = sum(1 for entry in puts if is_success(entry))
        result.dead_letters = dead_letter_count(self.db_file)
        if self.mode == MQTT_BUFFERED:
            result.buffered_left = buffer_count(self.db_file)

        result.kills = self.kills
        end = self.settled_at if self.settled_at is not None else time.monotonic()
        result.duration_s = end - self.started_at
        result.settled = self.settled
        result.outcomes = dict(parse_outcomes(self.output()))
        result.notes = list(self.notes)
        result.output_tail = self.output()[-OUTPUT_TAIL_CHARS:]

        if result.publish_errors:
            result.notes.append(f"publish errors: {dict(list(self.publisher.errors.items())[:5])}")
        if result.buffered_left:
            result.notes.append(f"{result.buffered_left} item(s) left in the SQLite buffer")
        statuses = collections.Counter(entry["status"] for entry in journal)
        result.notes.append("API answers: " + ", ".join(f"{status} {n}" for status, n in sorted(statuses.items(), key=str)))
        return result


def user_ids(rule: dict[str, Any]) -> list[Any]:
    """Return the ids of a level's users; the emulator expands each `{"id": N}` to the whole user."""
    return [user.get("id") if isinstance(user, dict) else user for user in rule.get("users") or []]


def is_success(entry: dict[str, Any]) -> bool:
    status = entry.get("status")
    return isinstance(status, int) and 200 <= status < 300


def count_older_over_newer(journal: list[dict[str, Any]]) -> int:
    """Count successful PUTs that name an earlier k than the previous successful PUT of the same level."""
    last_k: dict[str, int] = {}
    count = 0
    for entry in sorted(journal, key=lambda entry: entry["seq"]):
        if entry["method"] != "PUT" or not is_success(entry):
            continue
        users = (entry.get("body") or {}).get("users") or []
        if len(users) != 1:
            continue
        k = k_for_user_id(users[0]["id"])
        previous = last_k.get(entry["path"])
        if previous is not None and k < previous:
            count += 1
        last_k[entry["path"]] = k
    return count


def count_damaged(seed: dict[str, Any], state: dict[str, Any]) -> int:
    """Count levels whose fields other than `users` changed, plus unaddressed levels whose users changed."""
    seeded = {policy["id"]: policy for policy in seed["policies"]}
    damaged = 0
    for policy in state["policies"]:
        for level, rule in enumerate(policy["escalationRules"]):
            original = seeded[policy["id"]]["escalationRules"][level]
            kept = {name: value for name, value in rule.items() if name != "users"}
            original_kept = {name: value for name, value in original.items() if name != "users"}
            if kept != original_kept:
                damaged += 1
            elif level >= LEVELS_ADDRESSED and user_ids(rule) != user_ids(original):
                damaged += 1
    return damaged


def buffer_count(db_file: Path) -> int:
    database = Database(db_file, read_only=True)
    try:
        return SqliteBuffer(database).count()
    finally:
        database.close()


def dead_letter_count(db_file: Path) -> int:
    database = Database(db_file, read_only=True)
    try:
        return len(SqliteDeadLetterSink(database).list())
    finally:
        database.close()


def kafka_group_at_end(group_id: str, topic: str) -> bool:
    """True when the group's committed offset equals the end offset on every partition of `topic`."""
    partitions = [TopicPartition(topic, number) for number in range(KAFKA_PARTITIONS)]
    try:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap(), client_id=f"{group_id}-check")
        try:
            committed = admin.list_group_offsets({group_id: None}).get(group_id, {})
        finally:
            admin.close()
        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap(), group_id=None, client_id=f"{group_id}-check")
        try:
            end_offsets = consumer.end_offsets(partitions)
        finally:
            consumer.close()
    except KafkaError:
        return False
    for partition in partitions:
        end = end_offsets.get(partition, 0)
        meta = committed.get(partition)
        if end and (meta is None or meta.offset != end):
            return False
    return True


def delete_kafka_topic(topic: str) -> None:
    try:
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap(), client_id="faults-cleanup")
        try:
            admin.delete_topics([topic], raise_errors=False)
        finally:
            admin.close()
    except KafkaError:
        pass


# Scenarios


def run_in_threads(cases: list[Case], action: Callable[[Case], None]) -> None:
    """Run `action` on every case in its own thread; re-raise the first exception."""
    errors: list[BaseException] = []

    def run(case: Case) -> None:
        try:
            action(case)
        except BaseException as error:  # reported in the calling thread
            errors.append(error)

    threads = [threading.Thread(target=run, args=(case,), name=case.run_id) for case in cases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def build_cases(name: str, size: ScenarioSize, workdir: Path, modes: Iterable[str]) -> list[Case]:
    modes = [mode for mode in modes if mode in size.loads]
    cases = [Case(name, mode, size.loads[mode], workdir) for mode in modes]
    if name == "api_chaos" and daemon_supports_concurrency():
        for mode in modes:
            if mode in CONCURRENT_MODES:
                cases.append(Case(name, mode, size.loads[mode], workdir, concurrency=CHAOS_CONCURRENCY))
    return cases


def api_chaos(cases: list[Case], size: ScenarioSize) -> None:
    """503 on 30 %, 429 with Retry-After 1 on 10 %, 2 s latency on 5 % of API calls while publishing."""
    for case in cases:
        for rule in CHAOS_FAULTS:
            case.emulator.add_fault(**rule)
    run_in_threads(cases, lambda case: case.publish_and_settle(size.settle_timeout_s))


def bad_key(cases: list[Case], size: ScenarioSize) -> None:
    """Every API call gets 401 for `bad_key_s` while the assignments are published; then the key is restored."""
    for case in cases:
        case.emulator.set_api_key(WRONG_API_KEY)
    key_changed_at = time.monotonic()

    def publish_during_outage(case: Case) -> None:
        case.publish()
        remaining_s = size.bad_key_s - (time.monotonic() - key_changed_at)
        if remaining_s > 0:
            time.sleep(remaining_s)
        journal = case.emulator.journal()
        applied = sum(1 for entry in journal if entry["method"] == "PUT" and is_success(entry))
        unauthorized = sum(1 for entry in journal if entry["status"] == 401)
        case.notes.append(f"during the bad key: {unauthorized} calls got 401, {applied} PUTs succeeded")
        case.emulator.set_api_key(API_KEY)
        case.settle(size.settle_timeout_s)

    run_in_threads(cases, publish_during_outage)


def broker_restart(cases: list[Case], size: ScenarioSize) -> None:
    """Restart Mosquitto, then Kafka, while the assignments are being published."""
    cases_running = threading.Thread(
        target=run_in_threads,
        args=(cases, lambda case: case.publish_and_settle(size.settle_timeout_s)),
        name="cases",
    )
    cases_running.start()
    time.sleep(size.restart_at_s)
    for service, affected in (
        ("mosquitto", [case for case in cases if case.mode != KAFKA]),
        ("kafka", [case for case in cases if case.mode == KAFKA]),
    ):
        if not affected:
            continue
        started = time.monotonic()
        restart_service(service)
        for case in affected:
            case.notes.append(f"{service} restart took {time.monotonic() - started:.1f} s")
    cases_running.join()


def kill9(cases: list[Case], size: ScenarioSize) -> None:
    """kill -9 each daemon repeatedly while publishing, restarting it with the same command line and file."""

    def publish_kill_settle(case: Case, rng: random.Random) -> None:
        publishing = threading.Thread(target=case.publish, name=f"{case.run_id}-publish")
        publishing.start()
        case.kill_repeatedly(size.kills, size.kill_period_s, rng)
        publishing.join()
        case.settle(size.settle_timeout_s)

    seeds = {case.run_id: index for index, case in enumerate(cases)}
    run_in_threads(cases, lambda case: publish_kill_settle(case, random.Random(seeds[case.run_id])))


# Each scenario drives its cases until they settled; `run_scenario` collects the results.
SCENARIOS: dict[str, Callable[[list[Case], ScenarioSize], None]] = {
    "api_chaos": api_chaos,
    "bad_key": bad_key,
    "broker_restart": broker_restart,
    "kill9": kill9,
}


def run_scenario(
    name: str,
    size_name: str,
    workdir: Path,
    modes: Iterable[str] = MODES,
    settle_timeout_s: float | None = None,
) -> list[CaseResult]:
    """Run one scenario at one size ("ci" or "full") in every given mode and return the results."""
    size = SIZES[size_name][name]
    if settle_timeout_s is not None:
        size = dataclasses.replace(size, settle_timeout_s=settle_timeout_s)
    cases = build_cases(name, size, workdir, list(modes))
    try:
        run_in_threads(cases, Case.start)
        SCENARIOS[name](cases, size)
        return [case.result() for case in cases]
    finally:
        for case in cases:
            case.close()
