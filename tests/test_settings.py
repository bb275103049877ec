from __future__ import annotations

from pathlib import Path

import pytest
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.backends.sqlite.client import SqliteClient

from delidev import db
from delidev.settings import Settings, SettingsError

GOOD_SECRET = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b"  # as random as `openssl rand -hex`
MULTI = {
    "DATABASE_URL": "postgres://postgres@127.0.0.1/db",
    "DELIDEV_JWT_SECRET": GOOD_SECRET,
    "DELIDEV_OIDC_ISSUER_URL": "https://id.example.com",
    "DELIDEV_OIDC_CLIENT_ID": "delidev",
    "DELIDEV_OIDC_CLIENT_SECRET": "s3cr3t-value",
}


def test_zero_configuration_is_single_user_sqlite() -> None:
    settings = Settings.from_env({})
    assert settings.single_user_mode
    assert settings.is_sqlite
    assert settings.database_url == f"sqlite://{Path.home() / '.delidev' / 'delidev.db'}"
    assert (settings.server_port, settings.log_level) == (54871, "info")


def test_database_url_alone_means_multi_user() -> None:
    with pytest.raises(SettingsError, match="DELIDEV_JWT_SECRET"):
        Settings.from_env({"DATABASE_URL": "postgres://x@localhost/db"})


def test_multi_user_with_everything() -> None:
    settings = Settings.from_env(MULTI)
    assert not settings.single_user_mode
    assert settings.is_postgres


@pytest.mark.parametrize(
    "missing",
    [
        "DELIDEV_JWT_SECRET",
        "DELIDEV_OIDC_ISSUER_URL",
        "DELIDEV_OIDC_CLIENT_ID",
        "DELIDEV_OIDC_CLIENT_SECRET",
    ],
)
def test_multi_user_names_the_missing_variable(missing: str) -> None:
    env = {k: v for k, v in MULTI.items() if k != missing}
    with pytest.raises(SettingsError, match=missing):
        Settings.from_env(env)


@pytest.mark.parametrize(
    "secret", ["short", "changeme" * 5, "your-secret-key-here-xxxxxxxxxxxxxxx"]
)
def test_weak_or_placeholder_secret_is_refused(secret: str) -> None:
    with pytest.raises(SettingsError, match="DELIDEV_JWT_SECRET"):
        Settings.from_env({**MULTI, "DELIDEV_JWT_SECRET": secret})


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("DELIDEV_SERVER_PORT", "abc"),
        ("DELIDEV_SERVER_PORT", "70000"),
        ("DELIDEV_LOG_LEVEL", "loud"),
        ("DELIDEV_SINGLE_USER_MODE", "maybe"),
        ("DATABASE_URL", "mysql://x/y"),
        ("DELIDEV_HEARTBEAT_INTERVAL_MS", "0"),
    ],
)
def test_bad_values_name_the_variable(var: str, value: str) -> None:
    env = {"DELIDEV_SINGLE_USER_MODE": "true", var: value}
    with pytest.raises(SettingsError, match=var):
        Settings.from_env(env)


def test_explicit_single_user_with_a_database_url() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "sqlite:///tmp/x.db",
            "DELIDEV_SINGLE_USER_MODE": "true",
            "DELIDEV_LOG_LEVEL": "DEBUG",
            "DELIDEV_CORS_ORIGINS": "https://a, https://b",
        }
    )
    assert settings.single_user_mode
    assert settings.log_level == "debug"
    assert settings.cors_origins == ("https://a", "https://b")


def test_tilde_in_a_sqlite_url_is_expanded_for_tortoise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    settings = Settings(database_url="sqlite://~/data/x.db?journal_mode=wal")
    assert db.sqlite_path(settings) == str(tmp_path / "data" / "x.db")
    assert (
        db.tortoise_url(settings)
        == f"sqlite://{tmp_path}/data/x.db?journal_mode=wal&synchronous=NORMAL"
    )
    assert db.tortoise_url(Settings(database_url="sqlite://:memory:")) == "sqlite://:memory:"


async def test_sqlite_commits_are_synchronous_normal_unless_the_url_says(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL (1) by default; ``?synchronous=FULL`` (2) is kept."""
    for url, expected in [
        (f"sqlite://{tmp_path}/a.db", 1),
        (f"sqlite://{tmp_path}/b.db?synchronous=FULL", 2),
    ]:
        config = expand_db_url(db.tortoise_url(Settings(database_url=url)))
        client = SqliteClient(connection_name="x", **config["credentials"])
        await client.create_connection(with_db=True)
        try:
            (row,) = await client.execute_query_dict("PRAGMA synchronous")
            assert row["synchronous"] == expected
            (mode,) = await client.execute_query_dict("PRAGMA journal_mode")
            assert mode["journal_mode"] == "wal"
        finally:
            await client.close()


def test_repr_shows_no_secret() -> None:
    settings = Settings(
        database_url="postgres://app:db-pass-93ab@127.0.0.1:5432/delidev",
        single_user_mode=False,
        jwt_secret="jwt-secret-value-0123456789abcdef0123",
        oidc_client_secret="oidc-secret-value",
        worker_registration_token="worker-token-value",
    )
    text = repr(settings)
    for secret in ("db-pass-93ab", "jwt-secret-value", "oidc-secret-value", "worker-token-value"):
        assert secret not in text
    assert "jwt_secret='<set>'" in text
    assert "postgres://app:***@127.0.0.1:5432/delidev" in text
    assert "oidc_client_id=None" in text


def test_secret_limits_are_read_and_checked() -> None:
    settings = Settings.from_env(
        {
            "DELIDEV_SECRETS_MAX_KEYS": "8",
            "DELIDEV_SECRETS_MAX_TASK_BYTES": "4096",
            "DELIDEV_SECRETS_MAX_USER_BYTES": "65536",
            "DELIDEV_SECRETS_RELAY_MAX_AGE_MS": "30000",
        }
    )
    assert (
        settings.secrets_max_keys,
        settings.secrets_max_task_bytes,
        settings.secrets_max_user_bytes,
        settings.secrets_relay_max_age_ms,
    ) == (8, 4096, 65536, 30000)
    defaults = Settings.from_env({})
    assert (defaults.secrets_max_task_bytes, defaults.secrets_max_user_bytes) == (65536, 1048576)
    for var, value in (
        ("DELIDEV_SECRETS_MAX_USER_BYTES", "0"),
        ("DELIDEV_SECRETS_RELAY_MAX_AGE_MS", "600000"),  # past the drops' memory (600 s)
    ):
        with pytest.raises(SettingsError, match=var):
            Settings.from_env({var: value})


def test_the_console_switch_and_its_directory_are_read() -> None:
    defaults = Settings.from_env({})
    assert (defaults.console, defaults.console_dir) == (True, None)
    settings = Settings.from_env({"DELIDEV_CONSOLE": "false", "DELIDEV_CONSOLE_DIR": " /srv/ui "})
    assert (settings.console, settings.console_dir) == (False, Path("/srv/ui"))
    with pytest.raises(SettingsError, match="DELIDEV_CONSOLE"):
        Settings.from_env({"DELIDEV_CONSOLE": "sometimes"})


def test_the_worker_forget_delay_reads_from_the_environment() -> None:
    assert Settings.from_env({}).worker_forget_after_s == 7 * 24 * 3600
    assert Settings.from_env({"DELIDEV_WORKER_FORGET_AFTER_S": "0"}).worker_forget_after_s == 0
    with pytest.raises(SettingsError, match="DELIDEV_WORKER_FORGET_AFTER_S must be 0"):
        Settings.from_env({"DELIDEV_WORKER_FORGET_AFTER_S": "-1"})
