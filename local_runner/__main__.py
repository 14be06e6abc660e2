"""`python -m local_runner daemon ...`: the same command line as the `local-runner` script."""

from local_runner.cli import entry_point

if __name__ == "__main__":
    entry_point()
