"""Shared layer: map shift messages to escalation-policy levels and apply them in ilert."""

__version__ = "0.1.0"
