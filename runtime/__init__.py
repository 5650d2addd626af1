"""The stage runtime every consuming stage runs on: poll, batch, commit, dead letters, relay,
and the effects ledger client. Imports only ``schemas``, ``eventlog`` and ``store``."""
