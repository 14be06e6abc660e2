"""The `daemon` subcommand: install the local runtime, start the consumers, stop cleanly on a signal."""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import sqlite3
import threading

from policy_sync import runtime as runtime_module
from policy_sync.ilert import IlertClient
from policy_sync.user_cache import UserCache

from local_runner.cli import EXIT_FAILED, EXIT_OK, DaemonConfig
from local_runner.drain import BufferDrain, level_key_function
from local_runner.health import HealthServer, Readiness
from local_runner.logs import configure_logging
from local_runner.store import Database, SqliteBuffer, SqliteDeadLetterSink, SqliteOrderingStore

logger = logging.getLogger(__name__)

# How often the main thread checks that every worker thread is still alive.
WATCH_INTERVAL_S = 0.5

# How long a stop waits for each worker. A Kafka batch in flight finishes its
# current record first, and one sync takes up to three API calls.
STOP_TIMEOUT_S = 60.0


def lock_db_file(db_file: str) -> int:
    """Take an exclusive lock on `<db_file>.lock` and return its descriptor; the kernel drops it at exit.

    One daemon per SQLite file: the ordering claims assume no other process
    works on the same levels. Raises BlockingIOError when another daemon holds it.
    """
    descriptor = os.open(f"{db_file}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


def install_runtime(config: DaemonConfig, database: Database) -> None:
    """Build the local runtime (SQLite ordering store and dead-letter table) and install it for the handlers."""
    runtime_module.install(
        runtime_module.Runtime(
            settings=config.settings,
            client=IlertClient(config.settings.ilert_url, config.api_key),
            user_cache=UserCache(),
            dead_letters=SqliteDeadLetterSink(database),
            ordering=SqliteOrderingStore(database),
        )
    )


def run_daemon(config: DaemonConfig) -> int:
    """Run until SIGINT or SIGTERM (exit 0) or until a worker dies (exit 1)."""
    configure_logging(config.verbosity)
    stop_event = threading.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signal_number, lambda number, frame: request_stop(stop_event, number))

    try:
        lock_descriptor = lock_db_file(config.db_file)
    except BlockingIOError:
        logger.error("another local_runner daemon uses this SQLite file; stop it or give another -f", extra={"file": config.db_file})
        return EXIT_FAILED
    except OSError as error:
        logger.error("cannot create the lock file", extra={"file": f"{config.db_file}.lock", "error": str(error)})
        return EXIT_FAILED
    try:
        database = Database(config.db_file)
        stale_claims = SqliteOrderingStore(database).clear_claims()
    except sqlite3.Error as error:
        logger.error("cannot open the SQLite file", extra={"file": config.db_file, "error": str(error)})
        return EXIT_FAILED
    if stale_claims:
        logger.info("dropped ordering claims left by a previous run", extra={"claims": stale_claims})

    install_runtime(config, database)
    # The Kafka handler reads its lane count from the environment, as in Lambda.
    os.environ["CONCURRENCY"] = str(config.concurrency)
    # Imported after configure_logging, because Powertools reads its settings at import.
    from local_runner.handlers import invoke_kafka_handler, invoke_mqtt_handler

    readiness = Readiness()
    buffer = SqliteBuffer(database, level_key_function(config.settings))
    buffer.refresh_level_keys()

    def invoke_mqtt(event: dict) -> dict:
        return invoke_mqtt_handler(event, stop_event)

    # The drain runs in every mode: it also feeds dead letters requeued with
    # `dead-letters requeue`, whichever broker they first came from.
    drain = BufferDrain(buffer, config.settings.max_retries, stop_event, invoke_mqtt, config.concurrency)
    workers = [drain]
    if config.mqtt is not None:
        from local_runner.mqtt import MqttConsumer

        workers.append(
            MqttConsumer(config.mqtt, readiness, stop_event, invoke_mqtt, buffer, on_buffered=drain.wake_event.set)
        )
    if config.kafka is not None:
        from local_runner.kafka import KafkaRunner

        workers.append(KafkaRunner(config.kafka, readiness, stop_event, invoke_kafka_handler))

    health = None
    if config.health_port is not None:
        try:
            health = HealthServer(config.health_port, readiness)
        except OSError as error:
            logger.error("cannot serve the health endpoints", extra={"port": config.health_port, "error": str(error)})
            return EXIT_FAILED
        health.start()

    logger.info("local_runner started", extra={"file": config.db_file, "buffered": buffer.count()})
    for worker in workers:
        worker.start()

    exit_code = watch_workers(workers, stop_event)
    stop_workers(workers)
    if health is not None:
        health.stop()
    database.close()
    os.close(lock_descriptor)
    logger.info("local_runner stopped", extra={"exit_code": exit_code})
    return exit_code


def request_stop(stop_event: threading.Event, signal_number: int) -> None:
    """Signal handler: ask every loop to finish what it is doing and stop."""
    logger.info("stop requested", extra={"signal": signal.Signals(signal_number).name})
    stop_event.set()


def watch_workers(workers: list, stop_event: threading.Event) -> int:
    """Wait for a stop request; return 1 early if a worker thread ended on its own."""
    while not stop_event.wait(WATCH_INTERVAL_S):
        dead = [type(worker).__name__ for worker in workers if not worker.is_alive()]
        if dead:
            logger.error("worker stopped unexpectedly; shutting down", extra={"workers": ",".join(dead)})
            stop_event.set()
            return EXIT_FAILED
    return EXIT_OK


def stop_workers(workers: list) -> None:
    """Stop the MQTT connection, then wait for every worker to finish its message in flight."""
    for worker in workers:
        stop = getattr(worker, "stop", None)
        if stop is not None:
            stop()
    for worker in workers:
        worker.join(STOP_TIMEOUT_S)
        if worker.is_alive():
            logger.error("worker did not stop in time", extra={"worker": type(worker).__name__})
