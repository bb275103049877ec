"""What checking an access token costs per request in multi-user mode, in one process.

    python bench/bench_auth.py [--calls 3000] [--rounds 3]
                               [--database-url postgres://postgres@127.0.0.1:5432/<db>]

Three scenarios, interleaved per round, each timed over ``--calls`` sequential calls:

- ``jwt``: ``verify_access_token`` alone (signature, claims; no database) — the floor;
- ``two lookups``: the JWT plus two primary-key lookups, what ``authenticate`` did before the
  sign-in check (a revoked-``jti`` lookup and a user lookup);
- ``sign-in check``: ``services.auth.authenticate`` as it is: the JWT plus one indexed lookup
  of the token's sign-in (``refresh_tokens.family_id``).

The database holds 200 users with 5 sign-ins each; tokens are taken round-robin. Not a test:
it prints the median microseconds per call and asserts nothing. A PostgreSQL database given
with ``--database-url`` must be a throwaway one (migrations are applied, rows are added).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable

from delidev import db
from delidev import models as m
from delidev.auth.tokens import verify_access_token
from delidev.services import auth
from delidev.settings import Settings

SECRET = "k3J9x-Qm2Lp8Zr5Tn0Wv7Ys4Ub6Hc1Fd"


async def run(database_url: str, calls: int, rounds: int) -> None:
    settings = Settings(
        database_url=database_url,
        single_user_mode=False,
        jwt_secret=SECRET,
        oidc_issuer_url="https://id.example",
        oidc_client_id="c",
        oidc_client_secret="s",
    )
    ctx = await db.open_database(settings)
    try:
        tokens = []
        for i in range(200):
            user = await m.User.create(email=f"bench-{time.time_ns()}-{i}@example.com")
            for _ in range(5):
                tokens.append((await auth.issue_tokens(settings=settings, user=user)).access_token)

        async def jwt_only(token: str) -> None:
            verify_access_token(settings, token)

        async def two_lookups(token: str) -> None:
            access = verify_access_token(settings, token)
            await m.User.exists(id=access.user_id)
            await m.User.exists(id=access.user_id)

        async def sign_in_check(token: str) -> None:
            await auth.authenticate(settings=settings, token=token)

        scenarios: dict[str, Callable[[str], Awaitable[None]]] = {
            "jwt": jwt_only,
            "two lookups": two_lookups,
            "sign-in check": sign_in_check,
        }
        timings: dict[str, list[float]] = {name: [] for name in scenarios}
        for _ in range(rounds):
            for name, call in scenarios.items():
                started = time.perf_counter()
                for i in range(calls):
                    await call(tokens[i % len(tokens)])
                timings[name].append((time.perf_counter() - started) / calls * 1e6)
        for name, values in timings.items():
            print(f"{name:>14}: {statistics.median(values):7.0f} µs per call (median of {rounds})")
    finally:
        await db.close_database(ctx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    url = args.database_url or f"sqlite://{tempfile.mkdtemp()}/bench-auth.db"
    asyncio.run(run(url, args.calls, args.rounds))


if __name__ == "__main__":
    main()
