"""Composition root: settings, CLI, wiring of stages and backends, HTTP API."""
