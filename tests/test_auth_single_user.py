"""Single-user mode: auth is off, and the auth methods that still make sense answer for the
implicit local user."""

from __future__ import annotations

import httpx

from delidev.services.auth import LOCAL_USER_ID


async def _call(http: httpx.AsyncClient, method: str) -> httpx.Response:
    return await http.post(
        f"/delidev.v1.AuthService/{method}",
        content="{}",
        headers={"content-type": "application/json"},
    )


async def test_get_current_user_is_the_local_user(http: httpx.AsyncClient) -> None:
    response = await _call(http, "GetCurrentUser")
    assert response.status_code == 200, response.text
    user = response.json()["user"]
    assert user["id"] == str(LOCAL_USER_ID)
    assert user["email"] == "local@localhost"


async def test_logout_is_a_no_op(http: httpx.AsyncClient) -> None:
    out = await _call(http, "Logout")
    assert out.status_code == 200, out.text
    assert (await _call(http, "GetCurrentUser")).status_code == 200
