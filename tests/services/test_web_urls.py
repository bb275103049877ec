"""Links shown to people (PR and issue URLs) mean to a browser what they mean here.

Regression: ``https://evil\\@github.com/…`` was stored as a pull request link. Python's
parser reads its host as ``github.com`` (and so did the PR matching and anyone reading it);
a browser, which treats ``\\`` as ``/``, follows it to ``evil``. ``check_web_url`` refuses
what a browser could read differently. The property is checked against the WHATWG URL
parser that browsers implement, as Node ships it: for every URL accepted, Node's scheme,
host, port and credentials are the ones this server sees.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from delidev.errors import InvalidArgument
from delidev.services.common import check_web_url
from delidev.services.pr_urls import pr_key

# Reads one JSON string per line, answers one line: what the WHATWG parser makes of it.
_WHATWG = r"""
const rl = require("readline").createInterface({ input: process.stdin });
rl.on("line", (line) => {
  let out = null;
  try {
    const u = new URL(JSON.parse(line));
    out = { protocol: u.protocol, hostname: u.hostname, port: u.port,
            username: u.username, password: u.password };
  } catch (e) {}
  process.stdout.write(JSON.stringify(out) + "\n");
});
"""

Parse = Callable[[str], dict[str, Any] | None]


@pytest.fixture(scope="module")
def whatwg() -> Iterator[Parse]:
    node = shutil.which("node")
    assert node is not None, "Node.js is needed (the README's test command installs it)"
    proc = subprocess.Popen(
        [node, "-e", _WHATWG], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None
    assert stdout is not None

    def parse(url: str) -> dict[str, Any] | None:
        stdin.write(json.dumps(url) + "\n")
        stdin.flush()
        answer: dict[str, Any] | None = json.loads(stdout.readline())
        return answer

    try:
        yield parse
    finally:
        proc.kill()
        proc.wait()
        stdin.close()
        stdout.close()


_PIECES = st.sampled_from(
    [
        "a", "B", "1", "-", ".", ":", "/", "//", "@", "\\", "%", "%69", "%2e", "?", "#", "[",
        "]", "::1", "[::1]", " ", "\t", "\n", "\x00", "é", "ß", "github.com", "x.test", "80",
        "443", "99999", "^", "|", "_", "~", "&", "'", '"', "<", ">", "\u3002", "\uff0e",
        "xn--", "0x7f.1", "127.0.0.1",
    ]
)  # fmt: skip
_SCHEMES = st.sampled_from(
    ["https://", "http://", "HTTPS://", "https:/", "https:", "http:\\\\", "javascript:",
     "ftp://", ""]
)  # fmt: skip
_URLS = st.builds(
    lambda scheme, parts: scheme + "".join(parts), _SCHEMES, st.lists(_PIECES, max_size=10)
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(url=_URLS)
@example(url="https://evil\\@github.com/a/b/pull/1")
@example(url="https://github.com@evil.test/a/b/pull/1")
@example(url="https://g%69thub.com/a/b/pull/1")
@example(url="https://github.com\u3002evil.test/")
@example(url="https://[::1]:8443/a/b/pull/1")
@example(url="https://GitHub.com/a/b/pull/1")
@example(url="https://xn--abc.example/a/b/pull/1")
@example(url="https://a[::1]/")
@example(url="https://80/")
def test_an_accepted_link_means_the_same_to_a_browser(whatwg: Parse, url: str) -> None:
    try:
        accepted = check_web_url(url, "url")
    except InvalidArgument as error:
        refused = error  # every refusal names the field
        assert refused.field == "url"
        return
    ours = urlsplit(accepted)
    theirs = whatwg(accepted)
    assert theirs is not None, f"a browser cannot open {accepted!r}"
    assert theirs["protocol"] == ours.scheme + ":"
    assert theirs["hostname"].strip("[]") == ours.hostname
    default = {"http": 80, "https": 443}[ours.scheme]
    assert theirs["port"] == ("" if ours.port in (None, default) else str(ours.port))
    assert (theirs["username"], theirs["password"]) == ("", "")
    assert pr_key(accepted) is not None


@pytest.mark.parametrize(
    "url",
    [
        "https://github.com/a/b/pull/1",
        "http://gitlab.example.test:8080/group/sub/p/-/merge_requests/7#note_1",
        "https://github.com/a/b/issues/9?x=1&y=%5C",
        "  https://github.com/a/b/pull/1  ",
        "https://[2001:db8::1]/a/b/pull/1",
        "https://10.0.0.7/a/b/pull/1",
        "https://git.xn--bcher-kva.example/a/b/pull/1",
    ],
)
def test_ordinary_links_pass(whatwg: Parse, url: str) -> None:
    assert check_web_url(url, "url") == url.strip()
    assert whatwg(url) is not None
