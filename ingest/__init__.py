"""The Alertmanager receiver: auth, limits, normalisation, durable append."""

from ingest.auth import Credentials, check_authorization
from ingest.metrics import ReceiverMetrics
from ingest.receiver import Receiver, ReceiverConfig

__all__ = ["Credentials", "Receiver", "ReceiverConfig", "ReceiverMetrics", "check_authorization"]
