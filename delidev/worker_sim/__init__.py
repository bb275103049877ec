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
- ``[sim:plan=N]``: a planning job proposes N tasks in a chain (default ``--plan-tasks``);
- ``[sim:usage]``: report usage for this job even without ``--usage``; ``[sim:usage=N]``: a
  report every N lines; ``[sim:usage=off]``: none, even with ``--usage``.

Usage (``--usage``, off by default): a run reports plausible token usage and cost as it goes
— every ``--usage-every`` lines written, and for the rest before it waits (a TTY question, a
sleep) and before its final report — so a worker killed mid-run has its usage so far
counted. Each report is named ``<session id>-<n>``; a report whose answer was lost is sent
again under the same name, and the server counts it once. The model is ``--usage-model``,
else the task's model, else one per agent type (``claude-sonnet-4`` for claude_code); the
token model and the price table (integer micros of a dollar per million tokens) are in
``delidev.worker_sim.usage``. Off by default because a worker need not report usage at all,
and so that runs without it make exactly the calls they made before (tests and benchmarks
count them). The ``--report`` file then holds ``usage`` (the sum of the reports the server
answered) and ``usage_by_session``.
"""

from delidev.worker_sim.cli import cli, main, parse_args, run_fleet
from delidev.worker_sim.options import AGENT_TYPES, Options, Stats, directives, plan_yaml
from delidev.worker_sim.usage import PRICES, Meter, Spent
from delidev.worker_sim.worker import JobLost, SimWorker, Stopped

__all__ = [
    "AGENT_TYPES",
    "PRICES",
    "JobLost",
    "Meter",
    "Options",
    "SimWorker",
    "Spent",
    "Stats",
    "Stopped",
    "cli",
    "directives",
    "main",
    "parse_args",
    "plan_yaml",
    "run_fleet",
]
