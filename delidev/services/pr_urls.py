"""The key a pull request (GitHub) or merge request (GitLab) URL is matched by.

Two spellings of one PR give one key: scheme and host in lower case, the default port
dropped, no query or fragment (``#discussion_r1``), ``.git`` dropped from path segments, no
trailing slash, and nothing after the PR's number (``/files``, ``/diffs``, ``/checks``...).
The owner and repository path keep their case (a provider decides whether they are
case-insensitive; a user who links the PR copies it from the browser).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

_PR_PATH = re.compile(r"^(.*?/(?:pull|pulls|merge_requests|pull-requests)/\d+)(?:/.*)?$")
_DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_KEY_LENGTH = 2048


def pr_key(url: str) -> str | None:
    """The matching key of a PR URL; None when ``url`` is not an http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        return None
    netloc = host if port in (None, _DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    segments = [s.removesuffix(".git") for s in parts.path.split("/") if s]
    path = "/" + "/".join(segments)
    match = _PR_PATH.match(path)
    if match:
        path = match.group(1)
    key = f"{scheme}://{netloc}{path.rstrip('/')}"
    return key[:MAX_KEY_LENGTH]
