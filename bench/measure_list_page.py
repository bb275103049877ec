"""What one list page costs when its items are long: N tasks with 100,000-character prompts
(4-byte characters by default), then ``TaskService.List`` with ``limit`` 500 against a real
server process on a fresh SQLite file. Prints the tasks in the answer, its size, the time it
took and the server's resident memory before and at its peak (``VmHWM``).

    python bench/measure_list_page.py                 # 500 tasks, ~1 min
    python bench/measure_list_page.py --tasks 100 --char x

Since stop 18 a page ends before 2,000,000 characters of its items' long text
(``services/common.PAGE_CHARS``); before, this answer held all 500 tasks (200 MB).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _memory_mb(pid: int, field: str) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0]) // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=500)
    parser.add_argument("--char", default="\U0001f600", help="the prompts' character")
    args = parser.parse_args()
    port = _free_port()
    with tempfile.TemporaryDirectory() as directory:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DELIDEV_")},
            "DATABASE_URL": f"sqlite://{directory}/list.db",
            "DELIDEV_SINGLE_USER_MODE": "true",
            "DELIDEV_SERVER_PORT": str(port),
            "DELIDEV_LOG_LEVEL": "warning",
        }
        server = subprocess.Popen([sys.executable, "-m", "delidev.cli", "serve"], env=env)
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(200):
                try:
                    httpx.get(f"{base}/healthz")
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            with httpx.Client(base_url=base, timeout=300) as http:

                def call(method: str, body: dict[str, object]) -> dict[str, object]:
                    response = http.post(f"/delidev.v1.{method}", json=body)
                    response.raise_for_status()
                    return dict(response.json())

                ws = call("WorkspaceService/Create", {"name": "long prompts"})["workspace"]
                ws_id = ws["id"]  # type: ignore[index]
                repo = call(
                    "RepositoryService/Add",
                    {"workspaceId": ws_id, "remoteUrl": "https://github.com/acme/widgets"},
                )["repository"]
                group = call(
                    "RepositoryGroupService/Create",
                    {"workspaceId": ws_id, "repositoryIds": [repo["id"]]},  # type: ignore[index]
                )["group"]
                prompt = args.char * 100_000
                for _ in range(args.tasks):
                    call(
                        "TaskService/CreateUnit",
                        {"repositoryGroupId": group["id"], "prompt": prompt},  # type: ignore[index]
                    )
                before = _memory_mb(server.pid, "VmRSS")
                started = time.perf_counter()
                response = http.post(
                    "/delidev.v1.TaskService/List", json={"workspaceId": ws_id, "limit": 500}
                )
                took = time.perf_counter() - started
                page = response.json()
                print(
                    json.dumps(
                        {
                            "tasks": args.tasks,
                            "in_the_answer": len(page["tasks"]),
                            "next_page_token": bool(page.get("nextPageToken")),
                            "answer_mb": round(len(response.content) / 1e6, 1),
                            "seconds": round(took, 2),
                            "server_rss_before_mb": before,
                            "server_peak_mb": _memory_mb(server.pid, "VmHWM"),
                        }
                    )
                )
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
