"""Command line of local_runner: `daemon` with ilagent's flags, and `dead-letters list|requeue`.

Exit codes: 0 after a clean stop (SIGINT/SIGTERM) or a successful
subcommand, 1 when the daemon stops on an error it cannot recover from or a
requeue finds an unknown id, 2 for an invalid command line or configuration.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import sqlite3
import sys
from dataclasses import dataclass

from policy_sync.lanes import MAX_CONCURRENCY
from policy_sync.settings import ConfigError, Settings, normalize_api_key

DEFAULT_MQTT_PORT = 1883
DEFAULT_MQTT_NAME = "ilagent"
DEFAULT_MQTT_QOS = 1
DEFAULT_KAFKA_GROUP_ID = "ilagent"
DEFAULT_DB_FILE = "./ilagent.db3"

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2

PROGRAM = "local_runner"


@dataclass(frozen=True)
class MqttOptions:
    """How to reach and subscribe to the MQTT broker."""

    host: str
    port: int
    client_id: str
    username: str | None
    password: str | None
    tls: bool
    ca_file: str | None
    client_cert_file: str | None
    client_key_file: str | None
    qos: int
    buffered: bool
    shared_group: str | None
    topic: str

    @property
    def subscription(self) -> str:
        """The topic filter to subscribe to: `$share/<group>/<topic>` with a shared group."""
        if self.shared_group:
            return f"$share/{self.shared_group}/{self.topic}"
        return self.topic


@dataclass(frozen=True)
class KafkaOptions:
    """How to reach the Kafka cluster and which group to join."""

    brokers: tuple[str, ...]
    group_id: str
    topic: str


@dataclass(frozen=True)
class DaemonConfig:
    """Everything the daemon needs, checked at startup."""

    settings: Settings
    api_key: str
    db_file: str
    health_port: int | None
    verbosity: int
    concurrency: int
    mqtt: MqttOptions | None
    kafka: KafkaOptions | None


def build_parser() -> argparse.ArgumentParser:
    """Build the parser for every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Sync ilert escalation-policy levels from shift messages on MQTT or Kafka.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    daemon = commands.add_parser(
        "daemon",
        help="consume the brokers and sync policy levels",
        description="Consume MQTT and/or Kafka and call the policy-sync handlers. "
        "The ilert API key is read from the ILERT_API_KEY environment variable.",
    )
    add_daemon_arguments(daemon)

    dead_letters = commands.add_parser("dead-letters", help="inspect or requeue dead letters")
    dead_letter_commands = dead_letters.add_subparsers(dest="dead_letter_command", required=True, metavar="ACTION")
    listing = dead_letter_commands.add_parser("list", help="print the dead letters, oldest first")
    listing.add_argument("-f", "--file", default=DEFAULT_DB_FILE, help="SQLite file (default %(default)s)")
    listing.add_argument("--json", action="store_true", help="print one JSON object per line")
    requeue = dead_letter_commands.add_parser(
        "requeue", help="move dead letters back into the buffer, keeping their receive time"
    )
    requeue.add_argument("-f", "--file", default=DEFAULT_DB_FILE, help="SQLite file (default %(default)s)")
    requeue.add_argument("ids", nargs="*", type=int, metavar="ID", help="dead-letter ids to requeue")
    requeue.add_argument("--all", action="store_true", help="requeue every dead letter")
    return parser


def add_daemon_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ilagent's daemon flags that local_runner supports."""
    mqtt = parser.add_argument_group("MQTT")
    mqtt.add_argument("-m", "--mqtt_host", help="MQTT broker host; enables the MQTT consumer")
    mqtt.add_argument("-q", "--mqtt_port", type=int, default=DEFAULT_MQTT_PORT, help="MQTT port (default %(default)s)")
    mqtt.add_argument(
        "-n", "--mqtt_name", default=DEFAULT_MQTT_NAME, help="MQTT client id of the persistent session (default %(default)s)"
    )
    mqtt.add_argument("--mqtt_username", help="MQTT user name")
    mqtt.add_argument("--mqtt_password", help="MQTT password")
    mqtt.add_argument("--mqtt_tls", action="store_true", help="connect to MQTT over TLS")
    mqtt.add_argument("--mqtt_ca", help="CA certificate file (PEM) that signed the broker's certificate; implies TLS")
    mqtt.add_argument("--mqtt_client_cert", help="client certificate file (PEM); implies TLS")
    mqtt.add_argument("--mqtt_client_key", help="client private key file (PEM) for --mqtt_client_cert")
    mqtt.add_argument(
        "--mqtt_qos", type=int, default=DEFAULT_MQTT_QOS, help="subscription QoS 0..2 (default %(default)s); 0 needs --mqtt_buffer"
    )
    mqtt.add_argument(
        "--mqtt_buffer", action="store_true", help="write each message to the SQLite buffer before acknowledging it"
    )
    mqtt.add_argument("--mqtt_shared_group", help="subscribe as $share/GROUP/<policy topic>")

    kafka = parser.add_argument_group("Kafka")
    kafka.add_argument("--kafka_brokers", help="comma-separated host:port list; enables the Kafka consumer")
    kafka.add_argument("--kafka_group_id", default=DEFAULT_KAFKA_GROUP_ID, help="consumer group (default %(default)s)")

    general = parser.add_argument_group("general")
    general.add_argument(
        "-f", "--file", default=DEFAULT_DB_FILE, help="SQLite file for buffer, dead letters and ordering (default %(default)s)"
    )
    general.add_argument("-p", "--port", type=int, help="serve /health and /ready on 127.0.0.1:PORT")
    general.add_argument("-v", action="count", default=0, dest="verbosity", help="more log output: -v info, -vv debug")

    policy = parser.add_argument_group("policy sync")
    policy.add_argument("--policy_topic", help="MQTT topic filter (+ and # allowed) or Kafka topic of shift messages")
    policy.add_argument("--policy_routing_keys", help="comma-separated top-level fields joined into the routing key")
    policy.add_argument("--map_key_email", help="dot path of the email (default data.email)")
    policy.add_argument("--map_key_shift", help="dot path of the shift (default data.shift)")
    policy.add_argument("--shift_offset", help="signed integer added to the shift, e.g. --shift_offset=-1 (default 0)")
    policy.add_argument("--filter_key", help="dot path that must be present in a message")
    policy.add_argument("--filter_val", help="string the --filter_key field must equal")
    policy.add_argument("--ilert_url", help="ilert API base URL (default: ILERT_API_URL, else https://api.ilert.com)")
    policy.add_argument("--max_retries", help="attempts before a buffered message becomes a dead letter; 0 = unlimited (default 100)")
    policy.add_argument("--max_payload_bytes", help="largest accepted message in bytes (default 262144)")
    policy.add_argument(
        "--concurrency",
        type=int,
        default=1,
        help="routing keys synced in parallel by the Kafka handler and the buffer drain; "
        f"each routing key and level stays in order (1 to {MAX_CONCURRENCY}, default 1)",
    )


def build_daemon_config(args: argparse.Namespace, environ: dict[str, str]) -> DaemonConfig:
    """Check the daemon flags and environment; raise ConfigError with one line on the first problem."""
    if args.policy_topic is None:
        raise ConfigError("missing --policy_topic: give the MQTT topic filter or Kafka topic of the shift messages")
    settings = Settings.from_values(
        policy_topic=args.policy_topic,
        policy_routing_keys=args.policy_routing_keys,
        map_key_email=args.map_key_email,
        map_key_shift=args.map_key_shift,
        shift_offset=args.shift_offset,
        filter_key=args.filter_key,
        filter_val=args.filter_val,
        ilert_url=args.ilert_url if args.ilert_url is not None else environ.get("ILERT_API_URL") or None,
        max_retries=args.max_retries,
        max_payload_bytes=args.max_payload_bytes,
    )
    if not args.mqtt_host and not args.kafka_brokers:
        raise ConfigError("no broker configured: give -m/--mqtt_host, --kafka_brokers or both")
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ConfigError(f"invalid -p/--port: {args.port} is out of range; give a port from 0 to 65535")
    if not 1 <= args.concurrency <= MAX_CONCURRENCY:
        raise ConfigError(f"invalid --concurrency: {args.concurrency}; give 1 to {MAX_CONCURRENCY}")
    api_key = normalize_api_key(environ.get("ILERT_API_KEY", ""))
    return DaemonConfig(
        settings=settings,
        api_key=api_key,
        db_file=args.file,
        health_port=args.port,
        verbosity=args.verbosity,
        concurrency=args.concurrency,
        mqtt=build_mqtt_options(args, settings) if args.mqtt_host else None,
        kafka=build_kafka_options(args, settings) if args.kafka_brokers else None,
    )


def build_mqtt_options(args: argparse.Namespace, settings: Settings) -> MqttOptions:
    """Check the MQTT flags; raise ConfigError on the first problem."""
    if args.mqtt_qos not in (0, 1, 2):
        raise ConfigError(f"invalid --mqtt_qos: {args.mqtt_qos}; give 0, 1 or 2")
    if args.mqtt_qos == 0 and not args.mqtt_buffer:
        raise ConfigError(
            "invalid --mqtt_qos 0 without --mqtt_buffer: QoS 0 has no acknowledgement to withhold, "
            "so a retry would lose the message; add --mqtt_buffer or use QoS 1"
        )
    if not 1 <= args.mqtt_port <= 65535:
        raise ConfigError(f"invalid -q/--mqtt_port: {args.mqtt_port}; give a port from 1 to 65535")
    if not args.mqtt_name.strip():
        raise ConfigError("invalid -n/--mqtt_name: the client id is empty; a persistent session needs a fixed id")
    if args.mqtt_client_key and not args.mqtt_client_cert:
        raise ConfigError("invalid --mqtt_client_key without --mqtt_client_cert: give both or neither")
    if args.mqtt_password is not None and args.mqtt_username is None:
        raise ConfigError("invalid --mqtt_password without --mqtt_username: give the user name too")
    if args.mqtt_shared_group is not None and not args.mqtt_shared_group.strip("/ "):
        raise ConfigError("invalid --mqtt_shared_group: the group name is empty")
    for flag, path in (
        ("--mqtt_ca", args.mqtt_ca),
        ("--mqtt_client_cert", args.mqtt_client_cert),
        ("--mqtt_client_key", args.mqtt_client_key),
    ):
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"invalid {flag}: file {path!r} not found")
    return MqttOptions(
        host=args.mqtt_host,
        port=args.mqtt_port,
        client_id=args.mqtt_name,
        username=args.mqtt_username,
        password=args.mqtt_password,
        tls=bool(args.mqtt_tls or args.mqtt_ca or args.mqtt_client_cert),
        ca_file=args.mqtt_ca,
        client_cert_file=args.mqtt_client_cert,
        client_key_file=args.mqtt_client_key,
        qos=args.mqtt_qos,
        buffered=args.mqtt_buffer,
        shared_group=args.mqtt_shared_group,
        topic=settings.policy_topic,
    )


def build_kafka_options(args: argparse.Namespace, settings: Settings) -> KafkaOptions:
    """Check the Kafka flags; raise ConfigError on the first problem."""
    brokers = tuple(broker.strip() for broker in args.kafka_brokers.split(",") if broker.strip())
    if not brokers:
        raise ConfigError(f"invalid --kafka_brokers: {args.kafka_brokers!r}; give host:port[,host:port...]")
    if not args.kafka_group_id.strip():
        raise ConfigError("invalid --kafka_group_id: the group id is empty")
    if any(char in settings.policy_topic for char in "+#/"):
        raise ConfigError(
            f"invalid --policy_topic for Kafka: {settings.policy_topic!r} contains MQTT wildcards or '/'; "
            "give a Kafka topic name"
        )
    return KafkaOptions(brokers=brokers, group_id=args.kafka_group_id, topic=settings.policy_topic)


def list_dead_letters(db_file: str, as_json: bool) -> int:
    """Print the dead letters of `db_file`, oldest first."""
    from local_runner.store import Database, SqliteDeadLetterSink

    if not os.path.exists(db_file):
        raise sqlite3.OperationalError("file not found; give the daemon's -f/--file")
    database = Database(db_file, read_only=True)
    try:
        dead_letters = SqliteDeadLetterSink(database).list()
    finally:
        database.close()

    for dead_letter in dead_letters:
        record = {
            "id": dead_letter.id,
            "reason": dead_letter.reason,
            "detail": dead_letter.detail,
            "received_at_ms": dead_letter.received_at_ms,
            "created_at_ms": dead_letter.created_at_ms,
            "coordinates": dead_letter.coordinates,
            "payload_b64": None
            if dead_letter.payload is None
            else base64.b64encode(dead_letter.payload).decode("ascii"),
        }
        if as_json:
            print(json.dumps(record, sort_keys=True))
        else:
            print(format_dead_letter(record, dead_letter.payload))
    if not as_json:
        print(f"{len(dead_letters)} dead letter(s) in {db_file}")
    return EXIT_OK


def format_dead_letter(record: dict, payload: bytes | None) -> str:
    """Return one human-readable line for a dead letter, with the start of its payload."""
    created = datetime.datetime.fromtimestamp(record["created_at_ms"] / 1000, tz=datetime.timezone.utc)
    if payload is None:
        preview = "(no payload)"
    else:
        preview = repr(payload[:120].decode("utf-8", errors="replace"))
    topic = record["coordinates"].get("topic")
    return (
        f"{record['id']}\t{created:%Y-%m-%dT%H:%M:%SZ}\t{record['reason']}\ttopic={topic}\t"
        f"{record['detail']}\t{preview}"
    )


def requeue_dead_letters(db_file: str, ids: list[int], requeue_all: bool) -> int:
    """Move dead letters back into the buffer; return 1 if any id was not found."""
    from local_runner.store import Database, SqliteBuffer, SqliteDeadLetterSink

    database = Database(db_file)
    try:
        if requeue_all:
            ids = [dead_letter.id for dead_letter in SqliteDeadLetterSink(database).list()]
        buffer = SqliteBuffer(database)
        missing = []
        for dead_letter_id in ids:
            try:
                item_id = buffer.requeue_dead_letter(dead_letter_id)
            except KeyError:
                missing.append(dead_letter_id)
                continue
            print(f"requeued dead letter {dead_letter_id} as buffer item {item_id}")
    finally:
        database.close()

    if missing:
        print(f"{PROGRAM}: error: dead letter(s) not found: {', '.join(map(str, missing))}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{len(ids)} dead letter(s) requeued; a running daemon picks them up from the buffer")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    """Run the command line and return the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)

    if args.command == "dead-letters":
        try:
            if args.dead_letter_command == "list":
                return list_dead_letters(args.file, args.json)
            if bool(args.ids) == args.all:
                parser.error("dead-letters requeue: give one or more dead-letter ids or --all, not both")
            return requeue_dead_letters(args.file, args.ids, args.all)
        except sqlite3.Error as error:
            print(f"{PROGRAM}: error: cannot use SQLite file {args.file!r}: {error}", file=sys.stderr)
            return EXIT_FAILED

    try:
        config = build_daemon_config(args, dict(os.environ))
    except ConfigError as error:
        print(f"{PROGRAM}: error: {error}", file=sys.stderr)
        return EXIT_CONFIG

    from local_runner.daemon import run_daemon

    return run_daemon(config)


def entry_point() -> None:
    """Exit with `main()`'s code; for `python -m local_runner`."""
    sys.exit(main())
