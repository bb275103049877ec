"""``delidev-worker-sim``: a reference worker that speaks the WorkerService protocol.

It registers (with the agent types and labels it is given), heartbeats, takes jobs pushed on
its ``Watch`` stream (or, with ``--poll`` or while that stream is down, claims them by long
polling ``GetTask``), fetches the job's secrets, streams fake
agent output in numbered chunks, can ask a TTY question and wait for the answer, honours stop
requests from its heartbeat replies and its stream, leaves once it is drained (after its
job), and reports success, failure or (for a planning job) a
PLAN.yaml. Try the server without agents with it; the tests and benchmarks use it too.

What a job does can be steered from its prompt with directives:

- ``[sim:fail]``: report a failure instead of success;
- ``[sim:oom]``: report an out-of-memory failure (an infrastructure failure, retried by the
  server up to its limit);
- ``[sim:lines=N]``: print N lines (default ``--lines``);
- ``[sim:unicode]``: the lines hold emoji, combining marks, CJK and right-to-left text;
- ``[sim:sleep=S]``: work S seconds before reporting (a long job, to stop or kill);
- ``[sim:hang-first]``: the first attempt works until it is stopped (or the worker killed);
- ``[sim:tty]``: ask a text question and print the answer's length (never the answer);
  ``[sim:tty=password]``, ``=select``, ``=confirm``: a question of that kind;
- ``[sim:ansi]``: colour part of each line with ANSI escapes, as agents do;
- ``[sim:echo-secrets]``: print the secrets' values (the server must mask them);
- ``[sim:plan=N]``: a planning job proposes N tasks in a chain (default ``--plan-tasks``).
"""

from delidev.worker_sim.cli import cli, main, parse_args, run_fleet
from delidev.worker_sim.options import AGENT_TYPES, Options, Stats, directives, plan_yaml
from delidev.worker_sim.worker import JobLost, SimWorker, Stopped

__all__ = [
    "AGENT_TYPES",
    "JobLost",
    "Options",
    "SimWorker",
    "Stats",
    "Stopped",
    "cli",
    "directives",
    "main",
    "parse_args",
    "plan_yaml",
    "run_fleet",
]
