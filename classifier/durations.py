"""Kept only for ``classifier.policy``'s import: the parser lives in ``schemas.durations``,
where settings and the CLI use it too. Import from there; this module goes once nothing
imports it."""

from schemas.durations import Duration, format_duration, parse_duration

__all__ = ["Duration", "format_duration", "parse_duration"]
