"""Incident state, approvals, cooldowns; locks and rate limits."""
