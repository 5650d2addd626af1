"""Severity policy, classification and incident lifecycle."""
