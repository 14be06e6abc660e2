"""Benchmarks that need no broker: mapping throughput, cold import time, layer size."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from policy_sync.mapping import Assignment, map_message
from policy_sync.settings import Settings

REPO_DIR = Path(__file__).resolve().parent.parent
SAM = REPO_DIR / ".venv-sam" / "bin" / "sam"
LAYER_REQUIREMENTS = REPO_DIR / "layers" / "policy_sync" / "requirements.txt"
HANDLER_MODULES = ("mqtt_handler.app", "kafka_handler.app", "buffer_handler.app")
SAM_BUILD_TIMEOUT_S = 600
LAMBDA_PYTHON = "3.12"

# A shift message as a workforce tool sends it: the mapped fields plus some
# that the mapping ignores.
REALISTIC_PAYLOAD = (
    b'{"eventType": "active", "location": "powerplant", "slot": "three50",'
    b' "source": "shift-planner", "sentAt": "2026-12-04T18:00:00Z", "id": "4f1c2a9e-8d1b-4c3e-9a57-0b6f2d8e1c44",'
    b' "data": {"email": "jane.doe@example.com", "shift": "1", "name": "Jane Doe",'
    b' "team": "operations", "start": "2026-12-04T18:00:00Z", "end": "2026-12-05T06:00:00Z"}}'
)


def measure_mapping_throughput(messages: int, repeats: int = 3) -> float:
    """Return the best messages/s of `map_message` over REALISTIC_PAYLOAD, in this one thread."""
    settings = Settings.from_values(
        policy_topic="shifts", policy_routing_keys="location,slot", filter_key="eventType", filter_val="active"
    )
    if not isinstance(map_message(REALISTIC_PAYLOAD, settings), Assignment):
        raise RuntimeError("the benchmark payload no longer maps to an assignment")

    best_s = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(messages):
            map_message(REALISTIC_PAYLOAD, settings)
        best_s = min(best_s, time.perf_counter() - start)
    return messages / best_s


def median_run_s(code: str, runs: int) -> float:
    """Return the median wall time of `python -c code` in a fresh interpreter."""
    durations = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=REPO_DIR, check=True, timeout=60)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def measure_import_times_ms(runs: int) -> dict[str, float]:
    """Return each handler module's cold import time: median `import` run minus median bare start."""
    bare_s = median_run_s("pass", runs)
    return {module: (median_run_s(f"import {module}", runs) - bare_s) * 1000 for module in HANDLER_MODULES}


def find_lambda_python() -> dict[str, str] | None:
    """Return the environment under which `python3.12` runs (SAM needs it), or None."""
    environment = dict(os.environ)
    if _python_runs(environment):
        return environment
    if shutil.which("pyenv") is None:
        return None
    listing = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True, check=False)
    for version in listing.stdout.split():
        if version.startswith(LAMBDA_PYTHON + "."):
            candidate = {**environment, "PYENV_VERSION": version}
            if _python_runs(candidate):
                return candidate
    return None


def _python_runs(environment: dict[str, str]) -> bool:
    try:
        result = subprocess.run(
            [f"python{LAMBDA_PYTHON}", "-V"], env=environment, capture_output=True, check=False, timeout=30
        )
    except OSError:
        return False
    return result.returncode == 0


def folder_size_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


def measure_layer_size() -> tuple[int, str]:
    """Return the size in bytes of the built layer folder and how it was built.

    Uses `sam build PolicySyncLayer` into a temporary folder when the SAM CLI
    and a Python 3.12 are available. Otherwise installs the layer requirements
    with `pip install --target` for this interpreter, which is an estimate:
    wheels for another Python version can differ in size.
    """
    with tempfile.TemporaryDirectory(prefix="policy-sync-layer-") as work_dir:
        environment = find_lambda_python() if SAM.exists() else None
        if environment is not None:
            build_dir = Path(work_dir) / "build"
            environment["SAM_CLI_TELEMETRY"] = "0"
            subprocess.run(
                [
                    str(SAM), "build", "PolicySyncLayer",
                    "--build-dir", str(build_dir),
                    "--cache-dir", str(Path(work_dir) / "cache"),
                    "--no-cached",
                    "--template-file", str(REPO_DIR / "template.yaml"),
                ],  # fmt: skip
                cwd=REPO_DIR,
                env=environment,
                check=True,
                capture_output=True,
                timeout=SAM_BUILD_TIMEOUT_S,
            )
            return folder_size_bytes(build_dir / "PolicySyncLayer"), "sam build PolicySyncLayer (python3.12)"

        target = Path(work_dir) / "python"
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(target), "-r", str(LAYER_REQUIREMENTS)],
            check=True,
            capture_output=True,
            timeout=SAM_BUILD_TIMEOUT_S,
        )
        shutil.copytree(REPO_DIR / "layers" / "policy_sync" / "policy_sync", target / "policy_sync")
        python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
        return folder_size_bytes(target), f"pip install --target, Python {python_version} (estimate)"
