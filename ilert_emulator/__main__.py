"""Command line of the ilert API emulator.

``python -m ilert_emulator --port 8080 --seed examples/demo-seed.json``
prints ``ilert emulator listening on http://HOST:PORT`` on stdout once it
accepts connections, and serves until SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import signal
import sys
import threading

from ilert_emulator.server import EmulatorServer
from ilert_emulator.state import SeedError


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ilert_emulator",
        description="Serve an emulation of the ilert API calls that policy-sync uses.",
    )
    parser.add_argument("--seed", required=True, help="path of the JSON seed file with users and policies")
    parser.add_argument("--port", type=int, default=8080, help="TCP port to listen on; 0 picks a free port")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    parser.add_argument("--api-key", help="accepted API key; overrides the seed's api_key")
    parser.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow listening on an address that is not loopback",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request to stderr")
    return parser.parse_args(argv)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGTERM or SIGINT; return the exit status."""
    args = _parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not _is_loopback(args.host) and not args.allow_remote:
        print(
            f"error: host {args.host} is not a loopback address; pass --allow-remote to listen on it",
            file=sys.stderr,
        )
        return 2

    try:
        server = EmulatorServer(args.seed, host=args.host, port=args.port, api_key=args.api_key)
    except SeedError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1

    stop_requested = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)

    server.start()
    print(f"ilert emulator listening on {server.url}", flush=True)
    stop_requested.wait()
    server.stop()
    logging.getLogger("ilert_emulator").info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
