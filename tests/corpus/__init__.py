"""Payload corpora shared by the unit tests, the integration tests and the benchmark."""
