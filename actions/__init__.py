"""Remediation catalogue, playbooks, guard and worker."""
