"""Notification channels, routing by severity and update cadence."""
