"""Fault scenarios: the daemon against API faults, a wrong API key, broker restarts and kill -9.

`scenarios` contains the scenario library, `run` the command line
(`python -m tests.fault.run`); tests/integration/test_faults.py runs each
scenario at CI size.
"""
