"""One settings object per process: flags > ``SEVPIPE_*`` env > config file > defaults."""

from __future__ import annotations

import hashlib
import ipaddress
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from actions.aws_config import AwsConfig
from actions.inventory import Inventory, load_inventory
from actions.playbooks import Playbooks, default_playbooks, load_playbooks
from classifier.policy import Policy, default_policy, load_policy
from comms.email import EmailConfig
from comms.routing import Routing, default_routing, load_routing
from comms.slack import SlackConfig
from comms.statuspage import StatuspageConfig
from ingest import Credentials, ReceiverConfig
from schemas.durations import Seconds
from schemas.yamlfile import ConfigFileError, YamlDocument
from sevpipe.access import OperatorToken


class SettingsError(Exception):
    """Settings that cannot be used; one line that names the key (and where it came from)."""


def _read_secret(value: SecretStr | None, file: Path | None, name: str) -> str | None:
    if value is not None:
        return value.get_secret_value()
    if file is None:
        return None
    try:
        return file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(f"{name}_file: cannot read {file}: {exc.strerror}") from None


class Operator(BaseModel):
    """A person (or a bot acting for one) on the API: a bearer token and roles."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(
        min_length=1,
        max_length=100,
        pattern=r"^[^\x00-\x1f\x7f]+$",
        description="who the operator is: the name recorded for each of their decisions",
    )
    token_file: Path | None = Field(None, description="a file holding the operator's token")
    token_sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="the token's SHA-256, hex"
    )
    roles: tuple[Literal["viewer", "responder", "approver"], ...] = Field(
        min_length=1,
        description="viewer reads; responder also re-rates, acknowledges and takes command; "
        "approver also approves and denies actions",
    )

    @model_validator(mode="after")
    def _one_token(self) -> Operator:
        if (self.token_file is None) == (self.token_sha256 is None):
            raise ValueError("give token_file or token_sha256, one of them")
        return self


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SEVPIPE_", extra="forbid")

    data_dir: Path = Field(
        Path(".sevpipe"),
        description="where the embedded log (events.db), store (store.db) and outbox live",
    )
    host: str = Field("127.0.0.1", description="address the HTTP server binds")
    port: int = Field(9095, ge=0, le=65535, description="port the HTTP server listens on")
    auth_token: SecretStr | None = Field(None, description="bearer token Alertmanager sends")
    auth_token_file: Path | None = Field(None, description="a file holding auth_token")
    basic_auth_username: str | None = Field(
        None, description="basic auth user Alertmanager sends (with a password), instead of a token"
    )
    basic_auth_password: SecretStr | None = Field(None, description="the basic auth password")
    basic_auth_password_file: Path | None = Field(
        None, description="a file holding basic_auth_password"
    )
    allow_unauthenticated: bool = Field(
        False, description="listen beyond loopback without credentials (behind a trusted proxy)"
    )
    max_body_bytes: int = Field(1024 * 1024, gt=0, description="webhook bodies above are 413")
    fsync: Literal["full", "normal"] = Field(
        "full", description="full: a 200 survives power loss; normal: survives a process crash"
    )
    kafka_bootstrap: str | None = Field(
        None, description="host:port[,host:port]; set to use Apache Kafka as the event log"
    )
    kafka_topic_prefix: str = Field(
        "",
        description="prefix of topics, consumer groups and Redis keys (several installs on one "
        "cluster)",
    )
    kafka_partitions: int = Field(3, ge=1, description="partitions of topics sevpipe creates")
    kafka_replication: int = Field(1, ge=1, description="replication of topics sevpipe creates")
    kafka_alerts_retention: Seconds = Field(
        30 * 24 * 3600.0,
        gt=0,
        description="retention of the alerts topic sevpipe creates (backtest --since reaches "
        "that far back): seconds, or 30d; incidents, actions, notifications and dead letters "
        "are kept forever",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how the Kafka clients connect: TLS (SSL), SASL, or both"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism; required with SASL_PLAINTEXT and SASL_SSL"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user name")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password")
    kafka_sasl_password_file: Path | None = Field(
        None, description="a file holding kafka_sasl_password"
    )
    kafka_ssl_cafile: Path | None = Field(
        None,
        description="CA certificates (PEM) the brokers' certificates are checked against; "
        "none: the system's",
    )
    kafka_ssl_certfile: Path | None = Field(
        None, description="client certificate (PEM) for brokers that ask for one (mutual TLS)"
    )
    kafka_ssl_keyfile: Path | None = Field(
        None, description="the client certificate's private key (PEM)"
    )
    postgres_dsn: SecretStr | None = Field(
        None, description="postgresql://...; set to keep incident state in PostgreSQL"
    )
    postgres_sslmode: Literal["disable", "require", "verify-ca", "verify-full"] | None = Field(
        None,
        description="TLS to PostgreSQL: require encrypts, verify-ca also checks the CA, "
        "verify-full also the host name; none: as the DSN says (asyncpg: prefer)",
    )
    postgres_sslrootcert: Path | None = Field(
        None, description="CA certificates (PEM) for verify-ca and verify-full; none: the system's"
    )
    redis_url: str | None = Field(
        None,
        description="redis://... or rediss://... (TLS), with user:password@ for AUTH; locks, "
        "cooldowns and rate limits (none: in-process)",
    )
    redis_ca_file: Path | None = Field(
        None, description="CA certificates (PEM) for a rediss:// URL; none: the system's"
    )
    policy_file: Path | None = Field(
        None, description="severity policy YAML; default: the runbook's table (sevpipe policy show)"
    )
    routing_file: Path | None = Field(
        None, description="comms routing YAML; default: the runbook's (comms/default_routing.yaml)"
    )
    templates_dir: Path | None = Field(
        None,
        description="message templates that replace the shipped ones, file by file "
        "(internal/, public/)",
    )
    public_url: str = Field(
        "", description="sevpipe's URL as people reach it, for links in messages"
    )
    slack: SlackConfig | None = Field(
        None,
        description="Slack (Web API bot token or webhook); none: Slack routes go to the console "
        "outbox",
    )
    email: EmailConfig | None = Field(
        None, description="SMTP for the email routes; none: they go to the console outbox"
    )
    statuspage: StatuspageConfig | None = Field(
        None, description="Atlassian Statuspage; none: its route goes to the console outbox"
    )
    playbooks_file: Path | None = Field(
        None, description="remediation playbooks YAML; default: the runbook's (playbooks show)"
    )
    inventory_file: Path | None = Field(
        None, description="what remediations may touch; none: nothing (every target refused)"
    )
    aws: AwsConfig | None = Field(
        None, description="region, endpoint and credentials of the AWS actions; none: no AWS"
    )
    evidence_dir: Path | None = Field(
        None, description="where evidence bundles are kept; default: <data_dir>/evidence"
    )
    evidence_bucket: str | None = Field(
        None, description="an S3 bucket (through the aws settings) to keep bundles in instead"
    )
    evidence_max_bytes: int = Field(
        50 * 1024 * 1024, gt=0, description="the largest evidence bundle; parts beyond are cut"
    )
    actions_mode: Literal["dry_run", "live"] = Field(
        "dry_run", description="dry_run records the exact requests; live must be chosen"
    )
    kubeconfig: Path | None = Field(
        None, description="the cluster remediations act on; none: no Kubernetes actions"
    )
    actions_lease: Seconds = Field(
        60.0,
        gt=0,
        description="how long an action's claim lasts; an act process killed mid-action has "
        "its actions checked (not rerun) by another once this has passed; an action must "
        "finish within it",
    )
    approval_ttl: Seconds = Field(
        1800.0, gt=0, description="how long an action waits for approval before it expires"
    )
    operators: list[Operator] = Field(
        default_factory=list,
        description="API users with roles; once set, the Alertmanager credential only posts alerts",
    )
    notify_lease: Seconds = Field(
        60.0,
        gt=0,
        description="how long a message's claim lasts; a notify process killed mid-send has "
        "its messages checked (not resent) by another once this has passed",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="the lowest level logged"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="text for people; json: one JSON object per line"
    )
    shutdown_timeout: Seconds = Field(
        10.0, gt=0, description="how long to drain on SIGTERM: seconds, or 30s, 1m"
    )
    ingest_max_lag: int = Field(
        2000,
        ge=0,
        description="hold a webhook while the classifier is more than this many events behind "
        "(sevpipe run: its own; sevpipe ingest: the classifier group's commits, only while "
        "they move) (0: never)",
    )
    ingest_max_hold: Seconds = Field(
        2.0, gt=0, description="the longest a webhook is held; then it is appended anyway"
    )

    @field_validator("host")
    @classmethod
    def _host_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    def credentials(self) -> Credentials:
        token = _read_secret(self.auth_token, self.auth_token_file, "auth_token")
        password = _read_secret(
            self.basic_auth_password, self.basic_auth_password_file, "basic_auth_password"
        )
        if password is not None and self.basic_auth_username is None:
            raise SettingsError("basic_auth_username: required when a basic auth password is set")
        if self.basic_auth_username is not None and not password:
            # A user name alone would let anyone in who guesses it: no protection at all.
            raise SettingsError(
                "basic_auth_password: required when basic_auth_username is set"
                " (or basic_auth_password_file)"
            )
        return Credentials(
            bearer_token=token or None,
            basic_username=self.basic_auth_username,
            basic_password=password,
        )

    def operator_tokens(self) -> list[OperatorToken]:
        """Each operator's token digest, read now: a missing file fails at start."""
        out = []
        for op in self.operators:
            if op.token_sha256 is not None:
                digest = bytes.fromhex(op.token_sha256)
            else:
                assert op.token_file is not None  # noqa: S101 - the validator says so
                token = _read_secret(None, op.token_file, f"operators.{op.name}.token")
                if not token:
                    raise SettingsError(f"operators.{op.name}.token_file: {op.token_file} is empty")
                digest = hashlib.sha256(token.encode("utf-8")).digest()
            out.append(OperatorToken(op.name, frozenset(op.roles), digest))
        names = [op.name for op in self.operators]
        if len(set(names)) != len(names):
            raise SettingsError("operators: two operators have the same name")
        if len({t.sha256 for t in out}) != len(out):
            raise SettingsError("operators: two operators have the same token")
        return out

    def receiver_config(self) -> ReceiverConfig:
        return ReceiverConfig(
            credentials=self.credentials(),
            max_body_bytes=self.max_body_bytes,
        )

    def check_exposure(self) -> None:
        """Refuse to serve beyond loopback with no credentials, unless told to."""
        if self.credentials().configured or self.allow_unauthenticated or is_loopback(self.host):
            return
        raise SettingsError(
            f"host: refusing to listen on {self.host} without credentials; set "
            "SEVPIPE_AUTH_TOKEN (or SEVPIPE_AUTH_TOKEN_FILE, or basic auth), bind to "
            "127.0.0.1, or set allow_unauthenticated"
        )

    @property
    def eventlog_path(self) -> Path:
        return self.data_dir / "events.db"

    @property
    def consumer_group_prefix(self) -> str:
        return self.kafka_topic_prefix if self.kafka_bootstrap else ""

    @property
    def store_path(self) -> Path:
        return self.data_dir / "store.db"

    @property
    def effects_path(self) -> Path:
        return self.data_dir / "effects.db"

    def routing(self) -> Routing:
        if self.routing_file is None:
            return default_routing()
        try:
            return load_routing(self.routing_file)
        except ConfigFileError as exc:
            raise SettingsError(f"routing_file: {exc}") from None

    def playbooks(self) -> Playbooks:
        try:
            if self.playbooks_file is None:
                return default_playbooks()
            return load_playbooks(self.playbooks_file)
        except ConfigFileError as exc:
            raise SettingsError(f"playbooks_file: {exc}") from None

    def inventory(self) -> Inventory:
        if self.inventory_file is None:
            return Inventory()
        try:
            return load_inventory(self.inventory_file)
        except ConfigFileError as exc:
            raise SettingsError(f"inventory_file: {exc}") from None

    def policy(self) -> Policy:
        if self.policy_file is None:
            return default_policy()
        try:
            return load_policy(self.policy_file)
        except ConfigFileError as exc:
            raise SettingsError(f"policy_file: {exc}") from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from flags (``overrides``, None = not given), env and an optional YAML file."""
    try:
        doc = YamlDocument(config_file) if config_file is not None else None
    except ConfigFileError as exc:
        raise SettingsError(str(exc)) from None
    try:
        env = EnvSettingsSource(Settings)()
    except ValueError as exc:  # env values pydantic-settings could not decode
        raise SettingsError(f"environment: {exc}") from None
    flags = {k: v for k, v in overrides.items() if v is not None}
    try:
        return Settings(**{**(doc.data if doc else {}), **env, **flags})
    except ValidationError as exc:
        raise SettingsError(_describe(exc, doc, set(env) - set(flags))) from None


def _describe(exc: ValidationError, doc: YamlDocument | None, env_keys: set[str]) -> str:
    err = exc.errors(include_url=False)[0]
    loc = tuple(err["loc"])
    key = ".".join(str(p) for p in loc) or "settings"
    msg = "unknown setting" if err["type"] == "extra_forbidden" else err["msg"]
    if loc and str(loc[0]) in env_keys:
        origin = f" (from SEVPIPE_{str(loc[0]).upper()})"
    elif doc is not None and loc and str(loc[0]) in doc.data:
        origin = f" ({doc.where(loc)})"
    else:
        origin = ""
    more = f"; and {exc.error_count() - 1} more" if exc.error_count() > 1 else ""
    return f"invalid setting {key}: {msg}{origin}{more}"
