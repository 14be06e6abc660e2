"""End-to-end benchmark: a burst of assignments through a broker and the local_runner daemon to the emulator.

Latency is publish-to-applied. The publish time is taken by the producer
right before it hands a message to its client library. The applied time is
the emulator journal's arrival timestamp of the matching PUT plus the
latency the emulator added to that PUT, which is when the emulator sent its response.
Every assignment changes its level, so each one has exactly one PUT, found
by (policy id, level, user id), which is unique within a run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import requests
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion

from ilert_emulator.testing import EmulatorProcess, make_seed

REPO_DIR = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
USERS = 20
LEVELS = 3
KAFKA_PARTITIONS = 4
API_KEY = "bench-key"

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 60.0
RSS_SAMPLE_INTERVAL_S = 0.1
PROGRESS_POLL_INTERVAL_S = 0.25
# Per-assignment allowance on top of a fixed minute before a run is declared stuck.
RUN_TIMEOUT_PER_ASSIGNMENT_S = 0.5

# Outcome log lines that end a message: every one of them is acknowledged.
FINAL_OUTCOME_MESSAGES = ('"message applied"', '"message unchanged"', '"message superseded"', '"message rejected"')


@dataclass(frozen=True)
class Scenario:
    transport: str  # "kafka" or "mqtt-buffered"
    latency_ms: int
    concurrency: int
    assignments: int
    routing_keys: int


@dataclass
class Result:
    scenario: Scenario
    status: str = "ok"
    assignments_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    calls_per_assignment: float | None = None
    peak_rss_mb: float | None = None
    levels_checked: int = 0
    levels_wrong: int = 0
    puts_missing: int = 0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlannedAssignment:
    routing_key_index: int
    level: int
    user_index: int


def mqtt_port() -> int:
    return int(os.environ.get("POLICY_SYNC_MQTT_PORT", "18830"))


def kafka_bootstrap() -> str:
    return f"{HOST}:{int(os.environ.get('POLICY_SYNC_KAFKA_PORT', '19092'))}"


def plan_assignments(count: int, routing_keys: int) -> list[PlannedAssignment]:
    """Plan rounds over all routing keys; round r sets level r % 3 to user (key + r + 7) % 20.

    make_seed gives level j of key k to user (k + j) % 20, so with fewer than
    13 rounds every assignment changes its level and the same level never
    gets the same user twice.
    """
    rounds = -(-count // routing_keys)
    if rounds > 12:
        raise ValueError(f"{count} assignments over {routing_keys} routing keys need more than 12 rounds")
    plan = []
    for index in range(count):
        round_index, key_index = divmod(index, routing_keys)
        plan.append(PlannedAssignment(key_index, round_index % LEVELS, (key_index + round_index + 7) % USERS))
    return plan


def routing_key_name(index: int, routing_keys: int) -> str:
    digits = max(3, len(str(routing_keys - 1)))
    return f"key-{index:0{digits}d}"


def email_of(user_index: int) -> str:
    return f"user-{user_index:02d}@example.com"


def build_payload(assignment: PlannedAssignment, routing_keys: int) -> bytes:
    message = {
        "eventType": "active",
        "location": routing_key_name(assignment.routing_key_index, routing_keys),
        "data": {"email": email_of(assignment.user_index), "shift": assignment.level, "team": "operations"},
    }
    return json.dumps(message).encode()


def daemon_supports(flag: str) -> bool:
    """Return True when `local_runner daemon --help` lists `flag`."""
    result = subprocess.run(
        [sys.executable, "-m", "local_runner", "daemon", "--help"],
        cwd=REPO_DIR, capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    return flag in result.stdout


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


class RssSampler(threading.Thread):
    """Samples a process's resident set size until stopped; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self._process = psutil.Process(pid)
        self._stop_requested = threading.Event()
        self.peak_bytes = 0

    def run(self) -> None:
        while not self._stop_requested.is_set():
            try:
                self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            except psutil.Error:
                return
            self._stop_requested.wait(RSS_SAMPLE_INTERVAL_S)

    def stop(self) -> None:
        self._stop_requested.set()
        self.join()


class OutcomeCounter:
    """Counts final outcome lines in the daemon's log file, reading only what was appended."""

    def __init__(self, log_file: Path):
        self._log_file = log_file
        self._offset = 0
        self._partial = b""
        self.count = 0

    def update(self) -> int:
        with open(self._log_file, "rb") as log:
            log.seek(self._offset)
            chunk = log.read()
        self._offset += len(chunk)
        lines = (self._partial + chunk).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            text = line.decode("utf-8", errors="replace")
            if any(marker in text for marker in FINAL_OUTCOME_MESSAGES):
                self.count += 1
        return self.count


def run_scenario(scenario: Scenario, concurrency_flag: bool) -> Result:
    """Run one scenario end to end and return its figures."""
    result = Result(scenario)
    if scenario.concurrency > 1 and not concurrency_flag:
        result.status = "not available"
        result.notes.append("local_runner has no --concurrency flag yet")
        return result

    seed = make_seed(policies=scenario.routing_keys, users=USERS, levels=LEVELS, api_key=API_KEY)
    plan = plan_assignments(scenario.assignments, scenario.routing_keys)
    payloads = [build_payload(assignment, scenario.routing_keys) for assignment in plan]

    with tempfile.TemporaryDirectory(prefix="policy-sync-bench-") as work_dir, EmulatorProcess(seed) as emulator:
        if scenario.latency_ms:
            emulator.add_fault(latency_ms=scenario.latency_ms, ratio=1.0)
        run_id = uuid.uuid4().hex[:12]
        arguments, topic = transport_arguments(scenario, run_id)
        if scenario.concurrency > 1:
            arguments += ["--concurrency", str(scenario.concurrency)]
        log_file = Path(work_dir) / "daemon.log"
        daemon, health_port = start_daemon(arguments, Path(work_dir) / "bench.db3", emulator.url, log_file)
        sampler = None
        try:
            wait_ready(daemon, health_port, log_file)
            sampler = RssSampler(daemon.pid)
            sampler.start()
            publish_times = publish(scenario.transport, topic, plan, payloads, scenario.routing_keys)
            wait_done(daemon, OutcomeCounter(log_file), scenario.assignments, log_file)
        finally:
            if sampler is not None:
                sampler.stop()
            exit_code = stop_daemon(daemon)
        if exit_code != 0:
            result.notes.append(f"daemon exited with {exit_code}")
        result.peak_rss_mb = sampler.peak_bytes / (1024 * 1024)
        summarize(result, plan, publish_times, emulator.journal(), emulator.state())
    return result


def transport_arguments(scenario: Scenario, run_id: str) -> tuple[list[str], str]:
    if scenario.transport == "kafka":
        topic = f"bench-{run_id}"
        create_kafka_topic(topic)
        return ["--kafka_brokers", kafka_bootstrap(), "--kafka_group_id", f"bench-{run_id}", "--policy_topic", topic], topic
    topic = f"bench/{run_id}/shifts"
    arguments = ["-m", HOST, "-q", str(mqtt_port()), "-n", f"bench-{run_id}", "--mqtt_buffer", "--policy_topic", topic]
    return arguments, topic


def create_kafka_topic(topic: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap(), client_id="policy-sync-bench", request_timeout_ms=30000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=KAFKA_PARTITIONS, replication_factor=1)])
        admin.wait_for_topics([topic], timeout_ms=30000)
    finally:
        admin.close()


def start_daemon(arguments: list[str], db_file: Path, ilert_url: str, log_file: Path) -> tuple[subprocess.Popen, int]:
    health_port = free_port()
    environment = {**os.environ, "ILERT_API_KEY": API_KEY, "ILERT_API_URL": ilert_url}
    command = [
        sys.executable, "-m", "local_runner", "daemon", "-f", str(db_file), "-p", str(health_port), "-v",
        "--policy_routing_keys", "location", "--filter_key", "eventType", "--filter_val", "active",
        *arguments,
    ]  # fmt: skip
    with open(log_file, "wb") as log:
        process = subprocess.Popen(command, cwd=REPO_DIR, env=environment, stdout=log, stderr=subprocess.STDOUT)
    return process, health_port


def wait_ready(daemon: subprocess.Popen, health_port: int, log_file: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise RuntimeError(f"daemon exited with {daemon.returncode}: {log_file.read_text(errors='replace')[-2000:]}")
        try:
            if requests.get(f"http://{HOST}:{health_port}/ready", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(PROGRESS_POLL_INTERVAL_S)
    raise RuntimeError(f"daemon not ready within {READY_TIMEOUT_S} s")


def wait_done(daemon: subprocess.Popen, counter: OutcomeCounter, expected: int, log_file: Path) -> None:
    timeout_s = 60 + expected * RUN_TIMEOUT_PER_ASSIGNMENT_S
    deadline = time.monotonic() + timeout_s
    while counter.update() < expected:
        if daemon.poll() is not None:
            raise RuntimeError(f"daemon exited with {daemon.returncode}: {log_file.read_text(errors='replace')[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {counter.count} of {expected} messages finished within {timeout_s:.0f} s")
        time.sleep(PROGRESS_POLL_INTERVAL_S)


def stop_daemon(daemon: subprocess.Popen) -> int | None:
    if daemon.poll() is None:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait(STOP_TIMEOUT_S)
    return daemon.returncode


def publish(transport: str, topic: str, plan: list[PlannedAssignment], payloads: list[bytes], routing_keys: int) -> list[float]:
    """Publish every payload as one burst and return each publish time (epoch seconds)."""
    if transport == "kafka":
        return publish_kafka(topic, plan, payloads, routing_keys)
    return publish_mqtt(topic, payloads)


def publish_kafka(topic: str, plan: list[PlannedAssignment], payloads: list[bytes], routing_keys: int) -> list[float]:
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap(), acks=1, linger_ms=5)
    times = []
    try:
        for assignment, payload in zip(plan, payloads):
            # Keyed by routing key, so all levels of one policy stay in one partition, in order.
            key = routing_key_name(assignment.routing_key_index, routing_keys).encode()
            times.append(time.time())
            producer.send(topic, value=payload, key=key)
        producer.flush(timeout=60)
    finally:
        producer.close()
    return times


def publish_mqtt(topic: str, payloads: list[bytes]) -> list[float]:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"bench-producer-{uuid.uuid4().hex}")
    client.connect(HOST, mqtt_port())
    client.loop_start()
    times = []
    messages = []
    try:
        for payload in payloads:
            times.append(time.time())
            messages.append(client.publish(topic, payload, qos=1))
        for message in messages:
            message.wait_for_publish(60)
    finally:
        client.disconnect()
        client.loop_stop()
    return times


def summarize(result: Result, plan, publish_times, journal, state) -> None:
    """Fill in throughput, latency, API calls and the ordering check from the emulator's journal and state."""
    applied_at = {}
    for entry in journal:
        if entry["method"] != "PUT" or entry["status"] != 200:
            continue
        parts = entry["path"].split("/")  # /api/escalation-policies/{id}/levels/{N}
        policy_id, level = int(parts[3]), int(parts[5])
        for user in entry["body"]["users"]:
            latency_s = (entry["fault"] or {}).get("latency_ms", 0) / 1000
            applied_at[(policy_id, level, user["id"])] = entry["timestamp"] + latency_s

    latencies_ms = []
    for assignment, published in zip(plan, publish_times):
        applied = applied_at.get((1000 + assignment.routing_key_index, assignment.level, assignment.user_index + 1))
        if applied is None:
            result.puts_missing += 1
            continue
        latencies_ms.append((applied - published) * 1000)

    if latencies_ms:
        latencies_ms.sort()
        result.p50_ms = statistics.median(latencies_ms)
        result.p99_ms = latencies_ms[min(len(latencies_ms) - 1, int(len(latencies_ms) * 0.99))]
        elapsed_s = max(applied_at.values()) - min(publish_times)
        result.assignments_per_s = len(plan) / elapsed_s
    api_calls = sum(1 for entry in journal if entry["path"].startswith("/api/"))
    result.calls_per_assignment = api_calls / len(plan)

    newest = {}
    for assignment in plan:
        newest[(1000 + assignment.routing_key_index, assignment.level)] = assignment.user_index + 1
    policies = {policy["id"]: policy for policy in state["policies"]}
    for (policy_id, level), user_id in newest.items():
        users = policies[policy_id]["escalationRules"][level]["users"]
        result.levels_checked += 1
        if [user["id"] for user in users] != [user_id]:
            result.levels_wrong += 1
