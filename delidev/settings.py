"""Settings, read once from the environment (``Settings.from_env``) and passed down.

Tests build ``Settings(...)`` directly. Nothing else in the package reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from delidev.nesting import MAX_JSON_DEPTH

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
# Long enough that random text never holds one by chance (``xxx`` could, in base64 output:
# repeats like it are zxcvbn's to find).
_PLACEHOLDER_WORDS = ("change", "secret", "example", "placeholder", "default")
MIN_SECRET_LENGTH = 32
MIN_SECRET_GUESSES_LOG10 = 24
"""zxcvbn's estimate for the JWT secret, log10 of guesses: 10^24 is about 80 bits. Random
text scores about one digit per character (32 random hex digits: 27 to 32)."""
_ZXCVBN_MAX_LENGTH = 72  # zxcvbn refuses longer input; a prefix that long shows the pattern
MAX_JSON_DEPTH_LIMIT = 256
"""Highest DELIDEV_MAX_JSON_DEPTH: protobuf-py's parser recurses once per level."""


class SettingsError(Exception):
    """A setting is missing or unsafe; the message names the variable."""


def default_database_url() -> str:
    return f"sqlite://{Path.home() / '.delidev' / 'delidev.db'}"


_SECRET_FIELDS = frozenset(
    {
        "jwt_secret",
        "oidc_client_secret",
        "worker_registration_token",
        "operator_token",
        "metrics_token",
    }
)
_LOG_FORMATS = ("text", "json")


@dataclass(frozen=True, kw_only=True, repr=False)
class Settings:
    database_url: str = field(default_factory=default_database_url)
    """``sqlite:///abs/path``, ``sqlite://relative/path`` or ``postgres://user@host/db``."""
    single_user_mode: bool = True
    """Auth disabled: every request acts as the one local user."""
    jwt_secret: str | None = None
    """HS256 secret for access tokens (multi-user mode): at least 32 random characters,
    guessable ones are refused (``validate``)."""
    jwt_issuer: str = "delidev"
    jwt_expiration_hours: int = 24
    oidc_issuer_url: str | None = None
    oidc_client_id: str | None = None
    oidc_client_secret: str | None = None
    oidc_scopes: str = "openid email profile"
    oidc_redirect_url: str | None = None
    allowed_redirect_uris: tuple[str, ...] = ()
    """Redirect URIs a client may ask GetLoginUrl for (besides ``oidc_redirect_url``)."""
    server_host: str = "127.0.0.1"
    server_port: int = 54871
    log_level: str = "info"
    heartbeat_interval_ms: int = 30_000
    """Workers heartbeat this often; three missed beats mark a worker unhealthy."""
    worker_forget_after_s: int = 7 * 24 * 3600
    """A worker silent this long (unhealthy, holding no job) is removed; 0: never."""
    worker_registration_token: str | None = None
    """Shared token a worker presents to Register (multi-user mode)."""
    operator_token: str | None = None
    """Bearer token for operator calls (drain a worker) in multi-user mode; unset = refused."""
    max_run_seconds: int = 4 * 3600
    """A run longer than this is asked to stop and ends as failed (timeout); tasks may set
    their own limit."""
    stop_grace_seconds: int = 60
    """A stop (or timeout) the worker does not confirm within this is finalised by the server."""
    max_auto_attempts: int = 3
    """Runs of a job in a row that infrastructure failures may take (worker lost, container
    failed to start, out of memory) before it waits for a person's Retry."""
    retry_backoff_base_ms: int = 10_000
    """First automatic retry after this (doubling each time, with jitter)."""
    retry_backoff_max_ms: int = 10 * 60_000
    watch_keepalive_ms: int = 15_000
    """A worker's Watch stream gets a keep-alive message this often."""
    tty_input_timeout_ms: int = 15 * 60_000
    cors_origins: tuple[str, ...] = ()
    db_pool_size: int = 10
    """PostgreSQL connection pool size per process."""
    graphql_max_depth: int = 12
    graphql_max_tokens: int = 5_000
    graphql_max_aliases: int = 30
    graphql_max_body_bytes: int = 1_048_576
    """GraphQL requests with a larger body are refused (413) before they are parsed."""
    webhook_max_body_bytes: int = 1_048_576
    """Webhook deliveries with a larger body are refused (413) while they stream in."""
    webhook_delivery_retention_hours: int = 7 * 24
    """Delivery ids are remembered this long (a redelivery within it is not acted on
    again); GitHub offers redelivery of the last 3 days."""
    graphql_graphiql: bool | None = None
    """Serve GraphiQL on ``GET /graphql``; unset: on in single-user mode only."""
    graphql_ws_ping_interval_ms: int = 15_000
    """The server pings idle GraphQL WebSockets this often, so proxies keep them open."""
    graphql_ws_init_timeout_ms: int = 10_000
    """A GraphQL WebSocket must send ``connection_init`` within this time (else 4408)."""
    graphql_ws_max_connections: int = 2_000
    """GraphQL WebSocket connections one server process holds; more are refused (503)."""
    graphql_ws_max_connections_per_address: int = 500
    """GraphQL WebSocket connections one client address holds on one server process."""
    graphql_max_subscriptions: int = 2_000
    """GraphQL subscriptions one server process holds (all connections together)."""
    graphql_max_subscriptions_per_user: int = 500
    """Subscriptions one user holds on one server process (multi-user mode)."""
    graphql_max_subscriptions_per_connection: int = 100
    """Operations one GraphQL WebSocket runs at once."""
    migrate_on_start: bool = True
    log_max_value_chars: int = 1_000
    """Each value in a log line (an argument, an exception's message) is cut to this many
    characters; control characters in it are always escaped."""
    auth_max_token_chars: int = 4_096
    """The longest OIDC authorization code, refresh token or access token a request may
    carry; a longer one is refused before it is looked at (``invalid_argument``; an access
    token, a credential, ``unauthenticated``)."""
    log_max_chars: int = 16 * 1024 * 1024
    """A session's output log keeps at most this many characters (code points): its first
    half and its latest output; what lies between is dropped and replaced by a marker line."""
    log_chunk_max_chars: int = 1024 * 1024
    """A worker's log chunk holds at most this many characters (else invalid_argument)."""
    log_sequence_window: int = 1024
    """A log chunk may arrive at most this many sequence numbers ahead of the next one the
    log expects (else invalid_argument); chunks waiting for earlier ones hold at most
    ``log_max_chars`` characters in total."""
    secrets_max_keys: int = 64
    """Secrets one task holds at most (names)."""
    secrets_max_task_bytes: int = 64 * 1024
    """Bytes (names and values, UTF-8) one task's secrets hold at most."""
    secrets_max_user_bytes: int = 1024 * 1024
    """Bytes (names and values, UTF-8) all of one user's tasks hold at most, per replica."""
    secrets_relay_max_age_ms: int = 120_000
    """Sealed secret-relay messages older than this (or as far ahead, between replicas'
    clocks) are refused as possible replays; at most 300000."""
    graphql_max_fields: int = 2_000
    """GraphQL documents selecting more fields (fragments expanded) are refused."""
    graphql_max_fragments: int = 100
    """GraphQL documents defining more fragments are refused."""
    graphql_max_response_bytes: int = 8 * 1_048_576
    """A GraphQL answer over HTTP larger than this is refused (as are log reads that would
    make it so) with an error saying to read in pages."""
    graphql_introspection: bool | None = None
    """Schema introspection over GraphQL; unset: on in single-user mode only."""
    max_json_depth: int = MAX_JSON_DEPTH
    """Deepest nesting of arrays and objects in a Connect JSON request; deeper ones are
    refused (invalid_argument) before they are parsed."""
    allowed_hosts: tuple[str, ...] = ()
    """Names the server answers to (``Host`` header, any port) besides loopback names and
    ``server_host``: refuses DNS rebinding. ``*.example.com`` matches its subdomains,
    ``*`` any name. Empty in multi-user mode: any name (calls carry bearer tokens)."""
    sign_in_per_minute: int = 60
    """Sign-in calls (GetLoginUrl, HandleCallback, RefreshToken) one client address may make
    a minute, after a burst of ``sign_in_burst``; 0 = no limit."""
    sign_in_burst: int = 30
    worker_register_per_minute: int = 120
    """Worker registrations one client address may make a minute, after a burst of
    ``worker_register_burst``; 0 = no limit."""
    worker_register_burst: int = 120
    header_timeout_ms: int = 10_000
    """A connection must complete its request headers within this time, else it is answered
    408 and closed."""
    body_timeout_ms: int = 60_000
    """A request body that sends no byte for this long (while the server reads) is answered
    408 and its connection closed."""
    connect_fast_path: bool = True
    """Serve plain Connect unary calls by the lean path of ``connect/fast_unary.py`` (it uses
    connectrpc internals); off: every call takes connectrpc's ordinary path."""
    graphql_query_plans: bool = True
    """Answer plain POSTed queries from a compiled plan (``graphql/query_fast_path.py``);
    off: every query runs through Strawberry and graphql-core."""
    ws_deflate_bypass: bool = True
    """Serve WebSockets with ``websocket_deflate.py``'s protocol (compresses a log piece once
    for all followers, uses uvicorn internals); off: uvicorn's ordinary protocol."""
    shutdown_grace_s: int = 30
    """On SIGTERM, requests in flight get this long to finish before the server exits."""
    log_format: str = "text"
    """``text`` (one escaped line per record) or ``json`` (one object per line)."""
    metrics: bool = True
    """Serve Prometheus metrics at ``GET /metrics``."""
    metrics_token: str | None = None
    """Bearer token ``/metrics`` asks for; in multi-user mode the endpoint is refused while it
    is unset (metrics carry workspace and worker names). Single-user mode: open."""
    console: bool = True
    """Serve the web console at ``/`` (when the package holds its build)."""
    console_dir: Path | None = None
    """The console's build to serve (``index.html`` and ``assets/``); unset: the one in the
    package, ``delidev/console_dist``."""

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite:")

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith(("postgres://", "postgresql://"))

    def __repr__(self) -> str:
        """Every setting, secrets shown only as set or unset (safe for a log or a traceback)."""
        shown = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in _SECRET_FIELDS:
                value = "<set>" if value else "<unset>"
            elif f.name == "database_url":
                value = _without_password(value)
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]  # dataclass kwargs

    def validate(self) -> None:
        """Refuses unsafe or incomplete configurations; the message names the variable."""
        if not (self.is_sqlite or self.is_postgres):
            raise SettingsError(
                "DATABASE_URL must start with sqlite:// or postgres:// "
                f"(got a URL with scheme {self.database_url.split(':', 1)[0]!r})"
            )
        if self.log_level not in _LOG_LEVELS:
            raise SettingsError(
                f"DELIDEV_LOG_LEVEL must be one of {', '.join(_LOG_LEVELS)} "
                f"(got {self.log_level!r})"
            )
        if not 0 < self.server_port < 65536:
            raise SettingsError("DELIDEV_SERVER_PORT must be between 1 and 65535")
        if self.heartbeat_interval_ms <= 0:
            raise SettingsError("DELIDEV_HEARTBEAT_INTERVAL_MS must be positive")
        if self.sign_in_per_minute < 0:
            raise SettingsError("DELIDEV_SIGN_IN_PER_MINUTE must be 0 (no limit) or positive")
        if self.worker_register_per_minute < 0:
            raise SettingsError(
                "DELIDEV_WORKER_REGISTER_PER_MINUTE must be 0 (no limit) or positive"
            )
        if self.worker_forget_after_s < 0:
            raise SettingsError("DELIDEV_WORKER_FORGET_AFTER_S must be 0 (never) or positive")
        for var, amount in (
            ("DELIDEV_GRAPHQL_WS_PING_INTERVAL_MS", self.graphql_ws_ping_interval_ms),
            ("DELIDEV_GRAPHQL_WS_INIT_TIMEOUT_MS", self.graphql_ws_init_timeout_ms),
            ("DELIDEV_GRAPHQL_WS_MAX_CONNECTIONS", self.graphql_ws_max_connections),
            (
                "DELIDEV_GRAPHQL_WS_MAX_CONNECTIONS_PER_ADDRESS",
                self.graphql_ws_max_connections_per_address,
            ),
            ("DELIDEV_GRAPHQL_MAX_SUBSCRIPTIONS", self.graphql_max_subscriptions),
            (
                "DELIDEV_GRAPHQL_MAX_SUBSCRIPTIONS_PER_USER",
                self.graphql_max_subscriptions_per_user,
            ),
            (
                "DELIDEV_GRAPHQL_MAX_SUBSCRIPTIONS_PER_CONNECTION",
                self.graphql_max_subscriptions_per_connection,
            ),
            ("DELIDEV_GRAPHQL_MAX_FIELDS", self.graphql_max_fields),
            ("DELIDEV_GRAPHQL_MAX_FRAGMENTS", self.graphql_max_fragments),
            ("DELIDEV_GRAPHQL_MAX_RESPONSE_BYTES", self.graphql_max_response_bytes),
            ("DELIDEV_HEADER_TIMEOUT_MS", self.header_timeout_ms),
            ("DELIDEV_BODY_TIMEOUT_MS", self.body_timeout_ms),
            ("DELIDEV_SIGN_IN_BURST", self.sign_in_burst),
            ("DELIDEV_WORKER_REGISTER_BURST", self.worker_register_burst),
            ("DELIDEV_MAX_RUN_SECONDS", self.max_run_seconds),
            ("DELIDEV_STOP_GRACE_SECONDS", self.stop_grace_seconds),
            ("DELIDEV_MAX_AUTO_ATTEMPTS", self.max_auto_attempts),
            ("DELIDEV_RETRY_BACKOFF_BASE_MS", self.retry_backoff_base_ms),
            ("DELIDEV_WATCH_KEEPALIVE_MS", self.watch_keepalive_ms),
            ("DELIDEV_SHUTDOWN_GRACE_S", self.shutdown_grace_s),
            ("DELIDEV_WEBHOOK_MAX_BODY_BYTES", self.webhook_max_body_bytes),
            ("DELIDEV_WEBHOOK_DELIVERY_RETENTION_HOURS", self.webhook_delivery_retention_hours),
        ):
            if amount <= 0:
                raise SettingsError(f"{var} must be positive")
        if self.retry_backoff_max_ms < self.retry_backoff_base_ms:
            raise SettingsError(
                "DELIDEV_RETRY_BACKOFF_MAX_MS must be at least DELIDEV_RETRY_BACKOFF_BASE_MS"
            )
        if self.log_max_value_chars < 200:
            raise SettingsError("DELIDEV_LOG_MAX_VALUE_CHARS must be at least 200")
        if self.auth_max_token_chars < 512:
            raise SettingsError("DELIDEV_AUTH_MAX_TOKEN_CHARS must be at least 512")
        if self.log_chunk_max_chars <= 0 or self.log_sequence_window <= 0:
            raise SettingsError(
                "DELIDEV_LOG_CHUNK_MAX_CHARS and DELIDEV_LOG_SEQUENCE_WINDOW must be positive"
            )
        if self.log_max_chars < 2 * self.log_chunk_max_chars:
            raise SettingsError(
                "DELIDEV_LOG_MAX_CHARS must be at least twice DELIDEV_LOG_CHUNK_MAX_CHARS "
                "(the log keeps its head and its latest chunks)"
            )
        for var, amount in (
            ("DELIDEV_SECRETS_MAX_KEYS", self.secrets_max_keys),
            ("DELIDEV_SECRETS_MAX_TASK_BYTES", self.secrets_max_task_bytes),
            ("DELIDEV_SECRETS_MAX_USER_BYTES", self.secrets_max_user_bytes),
        ):
            if amount <= 0:
                raise SettingsError(f"{var} must be positive")
        if not 0 < self.secrets_relay_max_age_ms <= 300_000:
            raise SettingsError("DELIDEV_SECRETS_RELAY_MAX_AGE_MS must be between 1 and 300000")
        self._validate_http()
        if self.log_format not in _LOG_FORMATS:
            raise SettingsError(
                f"DELIDEV_LOG_FORMAT must be one of {', '.join(_LOG_FORMATS)} "
                f"(got {self.log_format[:32]!r})"
            )
        if self.metrics_token is not None and len(self.metrics_token) < 32:
            raise SettingsError("DELIDEV_METRICS_TOKEN must be at least 32 characters")
        if self.operator_token is not None and len(self.operator_token) < 32:
            raise SettingsError("DELIDEV_OPERATOR_TOKEN must be at least 32 characters")
        if self.jwt_secret:  # also in single-user mode, where it seals the secret relay
            _check_secret_strength(self.jwt_secret)
        if self.single_user_mode:
            return
        if not self.jwt_secret:
            raise SettingsError("DELIDEV_JWT_SECRET is required in multi-user mode")
        for name, value in (
            ("DELIDEV_OIDC_ISSUER_URL", self.oidc_issuer_url),
            ("DELIDEV_OIDC_CLIENT_ID", self.oidc_client_id),
            ("DELIDEV_OIDC_CLIENT_SECRET", self.oidc_client_secret),
        ):
            if not value:
                raise SettingsError(f"{name} is required in multi-user mode")

    def _validate_http(self) -> None:
        if not 0 < self.max_json_depth <= MAX_JSON_DEPTH_LIMIT:
            raise SettingsError(
                f"DELIDEV_MAX_JSON_DEPTH must be between 1 and {MAX_JSON_DEPTH_LIMIT}"
            )
        for host in self.allowed_hosts:
            name = host[2:] if host.startswith("*.") else host
            port = ":" in name and not name.startswith("[")  # IPv6 literals come bracketed
            if host != "*" and (not name or "*" in name or "/" in name or port):
                raise SettingsError(
                    f"DELIDEV_ALLOWED_HOSTS: {host!r} is not a host name (without a port),"
                    " '*.domain' or '*'"
                )
        for origin in self.cors_origins:
            if origin != "*" and not _is_origin(origin):
                raise SettingsError(
                    f"DELIDEV_CORS_ORIGINS: {origin!r} is not an origin like"
                    " 'https://app.example.com' or 'http://localhost:5173' (no path)"
                )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads the DELIDEV_* variables and DATABASE_URL, then validates."""
        env = os.environ if env is None else env
        kwargs: dict[str, object] = {}
        database_url = env.get("DATABASE_URL", "").strip()
        if database_url:
            kwargs["database_url"] = database_url
        single = env.get("DELIDEV_SINGLE_USER_MODE", "").strip()
        kwargs["single_user_mode"] = (
            _parse_bool("DELIDEV_SINGLE_USER_MODE", single) if single else not database_url
        )
        strings = {
            "DELIDEV_JWT_SECRET": "jwt_secret",
            "DELIDEV_JWT_ISSUER": "jwt_issuer",
            "DELIDEV_OIDC_ISSUER_URL": "oidc_issuer_url",
            "DELIDEV_OIDC_CLIENT_ID": "oidc_client_id",
            "DELIDEV_OIDC_CLIENT_SECRET": "oidc_client_secret",
            "DELIDEV_OIDC_SCOPES": "oidc_scopes",
            "DELIDEV_OIDC_REDIRECT_URL": "oidc_redirect_url",
            "DELIDEV_SERVER_HOST": "server_host",
            "DELIDEV_WORKER_REGISTRATION_TOKEN": "worker_registration_token",
            "DELIDEV_OPERATOR_TOKEN": "operator_token",
            "DELIDEV_METRICS_TOKEN": "metrics_token",
        }
        for var, attr in strings.items():
            value = env.get(var, "").strip()
            if value:
                kwargs[attr] = value
        level = env.get("DELIDEV_LOG_LEVEL", "").strip()
        if level:
            kwargs["log_level"] = level.lower()
        log_format = env.get("DELIDEV_LOG_FORMAT", "").strip()
        if log_format:
            kwargs["log_format"] = log_format.lower()
        console_dir = env.get("DELIDEV_CONSOLE_DIR", "").strip()
        if console_dir:
            kwargs["console_dir"] = Path(console_dir)
        ints = {
            "DELIDEV_SERVER_PORT": "server_port",
            "DELIDEV_JWT_EXPIRATION_HOURS": "jwt_expiration_hours",
            "DELIDEV_HEARTBEAT_INTERVAL_MS": "heartbeat_interval_ms",
            "DELIDEV_WORKER_FORGET_AFTER_S": "worker_forget_after_s",
            "DELIDEV_TTY_INPUT_TIMEOUT_MS": "tty_input_timeout_ms",
            "DELIDEV_DB_POOL_SIZE": "db_pool_size",
            "DELIDEV_GRAPHQL_MAX_DEPTH": "graphql_max_depth",
            "DELIDEV_GRAPHQL_MAX_TOKENS": "graphql_max_tokens",
            "DELIDEV_GRAPHQL_MAX_ALIASES": "graphql_max_aliases",
            "DELIDEV_GRAPHQL_MAX_BODY_BYTES": "graphql_max_body_bytes",
            "DELIDEV_WEBHOOK_MAX_BODY_BYTES": "webhook_max_body_bytes",
            "DELIDEV_WEBHOOK_DELIVERY_RETENTION_HOURS": "webhook_delivery_retention_hours",
            "DELIDEV_GRAPHQL_WS_PING_INTERVAL_MS": "graphql_ws_ping_interval_ms",
            "DELIDEV_GRAPHQL_WS_INIT_TIMEOUT_MS": "graphql_ws_init_timeout_ms",
            "DELIDEV_GRAPHQL_WS_MAX_CONNECTIONS": "graphql_ws_max_connections",
            "DELIDEV_GRAPHQL_WS_MAX_CONNECTIONS_PER_ADDRESS": (
                "graphql_ws_max_connections_per_address"
            ),
            "DELIDEV_GRAPHQL_MAX_SUBSCRIPTIONS": "graphql_max_subscriptions",
            "DELIDEV_GRAPHQL_MAX_SUBSCRIPTIONS_PER_USER": "graphql_max_subscriptions_per_user",
            "DELIDEV_GRAPHQL_MAX_SUBSCRIPTIONS_PER_CONNECTION": (
                "graphql_max_subscriptions_per_connection"
            ),
            "DELIDEV_LOG_MAX_VALUE_CHARS": "log_max_value_chars",
            "DELIDEV_AUTH_MAX_TOKEN_CHARS": "auth_max_token_chars",
            "DELIDEV_LOG_MAX_CHARS": "log_max_chars",
            "DELIDEV_LOG_CHUNK_MAX_CHARS": "log_chunk_max_chars",
            "DELIDEV_LOG_SEQUENCE_WINDOW": "log_sequence_window",
            "DELIDEV_SECRETS_MAX_KEYS": "secrets_max_keys",
            "DELIDEV_SECRETS_MAX_TASK_BYTES": "secrets_max_task_bytes",
            "DELIDEV_SECRETS_MAX_USER_BYTES": "secrets_max_user_bytes",
            "DELIDEV_SECRETS_RELAY_MAX_AGE_MS": "secrets_relay_max_age_ms",
            "DELIDEV_GRAPHQL_MAX_FIELDS": "graphql_max_fields",
            "DELIDEV_GRAPHQL_MAX_FRAGMENTS": "graphql_max_fragments",
            "DELIDEV_GRAPHQL_MAX_RESPONSE_BYTES": "graphql_max_response_bytes",
            "DELIDEV_MAX_JSON_DEPTH": "max_json_depth",
            "DELIDEV_HEADER_TIMEOUT_MS": "header_timeout_ms",
            "DELIDEV_BODY_TIMEOUT_MS": "body_timeout_ms",
            "DELIDEV_SIGN_IN_PER_MINUTE": "sign_in_per_minute",
            "DELIDEV_SIGN_IN_BURST": "sign_in_burst",
            "DELIDEV_WORKER_REGISTER_PER_MINUTE": "worker_register_per_minute",
            "DELIDEV_WORKER_REGISTER_BURST": "worker_register_burst",
            "DELIDEV_MAX_RUN_SECONDS": "max_run_seconds",
            "DELIDEV_STOP_GRACE_SECONDS": "stop_grace_seconds",
            "DELIDEV_MAX_AUTO_ATTEMPTS": "max_auto_attempts",
            "DELIDEV_RETRY_BACKOFF_BASE_MS": "retry_backoff_base_ms",
            "DELIDEV_RETRY_BACKOFF_MAX_MS": "retry_backoff_max_ms",
            "DELIDEV_WATCH_KEEPALIVE_MS": "watch_keepalive_ms",
            "DELIDEV_SHUTDOWN_GRACE_S": "shutdown_grace_s",
        }
        for var, attr in ints.items():
            value = env.get(var, "").strip()
            if value:
                try:
                    kwargs[attr] = int(value)
                except ValueError:
                    raise SettingsError(f"{var} must be an integer (got {value!r})") from None
        for var, attr in (
            ("DELIDEV_ALLOWED_REDIRECT_URIS", "allowed_redirect_uris"),
            ("DELIDEV_CORS_ORIGINS", "cors_origins"),
            ("DELIDEV_ALLOWED_HOSTS", "allowed_hosts"),
        ):
            value = env.get(var, "").strip()
            if value:
                kwargs[attr] = tuple(v.strip() for v in value.split(",") if v.strip())
        for var, attr in (
            ("DELIDEV_GRAPHIQL", "graphql_graphiql"),
            ("DELIDEV_MIGRATE_ON_START", "migrate_on_start"),
            ("DELIDEV_GRAPHQL_INTROSPECTION", "graphql_introspection"),
            ("DELIDEV_CONNECT_FAST_PATH", "connect_fast_path"),
            ("DELIDEV_GRAPHQL_QUERY_PLANS", "graphql_query_plans"),
            ("DELIDEV_WS_DEFLATE_BYPASS", "ws_deflate_bypass"),
            ("DELIDEV_METRICS", "metrics"),
            ("DELIDEV_CONSOLE", "console"),
        ):
            value = env.get(var, "").strip()
            if value:
                kwargs[attr] = _parse_bool(var, value)
        settings = cls(**kwargs)  # type: ignore[arg-type]  # values typed per attribute above
        settings.validate()
        return settings


def _check_secret_strength(secret: str) -> None:
    """Refuses a JWT secret that is short, a placeholder, or guessable (repeats, sequences,
    keyboard walks, words: zxcvbn's estimate, which random text passes)."""
    from zxcvbn import zxcvbn  # loads its word lists: only when a secret is checked

    lowered = secret.lower()
    weak = len(secret) < MIN_SECRET_LENGTH or any(w in lowered for w in _PLACEHOLDER_WORDS)
    if not weak:
        estimate = zxcvbn(secret[:_ZXCVBN_MAX_LENGTH])
        weak = float(estimate["guesses_log10"]) < MIN_SECRET_GUESSES_LOG10
    if weak:
        raise SettingsError(
            f"DELIDEV_JWT_SECRET looks weak or like a placeholder: use at least "
            f"{MIN_SECRET_LENGTH} random characters (e.g. `openssl rand -hex 32`)"
        )


def _is_origin(value: str) -> bool:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  # raises ValueError for a bad port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not (parts.query or parts.fragment or parts.username)
    )


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def _parse_bool(var: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{var} must be true or false (got {value!r})")
