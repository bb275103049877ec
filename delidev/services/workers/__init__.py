"""Workers: registration, heartbeats, atomic job claims with leases, reports and sweeps.

One module per concern; every public name is re-exported here, so callers keep writing
``workers.claim_job(...)``:

- ``registry``: registration, credentials, heartbeats, unregistering;
- ``claims``: handing a queued job to one worker with a fresh lease (the claim statement);
- ``jobs``: calls about a leased job (reports, logs, secrets, TTY questions), lease-checked;
- ``health``: the sweep that marks silent workers unhealthy and queues their jobs again;
- ``waiting``: the bound on a call's wait, and the signal that wakes waiting claims.

A test that patches a name patches it in the module that uses it (``workers.jobs``, ...):
the names here are copies.
"""

from delidev.services.workers.claims import Job, claim_job, describe_job
from delidev.services.workers.health import MISSED_BEATS, sweep_workers
from delidev.services.workers.jobs import (
    FailureKind,
    append_job_log,
    ask_tty_input,
    get_job_secrets,
    leased_session,
    report_status,
    tty_expiry,
    wait_tty_answer,
)
from delidev.services.workers.registry import (
    HeartbeatReply,
    Registration,
    WorkerView,
    admit_registration,
    authenticate_caller,
    authenticate_drain,
    authenticate_worker,
    get_worker,
    hash_credential,
    heartbeat,
    list_workers,
    register_worker,
    set_draining,
    unregister_worker,
    visible_tasks,
)
from delidev.services.workers.waiting import MAX_WAIT_MS, JobSignal

__all__ = [
    "MAX_WAIT_MS",
    "MISSED_BEATS",
    "FailureKind",
    "HeartbeatReply",
    "Job",
    "JobSignal",
    "Registration",
    "WorkerView",
    "admit_registration",
    "append_job_log",
    "ask_tty_input",
    "authenticate_caller",
    "authenticate_drain",
    "authenticate_worker",
    "claim_job",
    "describe_job",
    "get_job_secrets",
    "get_worker",
    "hash_credential",
    "heartbeat",
    "leased_session",
    "list_workers",
    "register_worker",
    "report_status",
    "set_draining",
    "sweep_workers",
    "tty_expiry",
    "unregister_worker",
    "visible_tasks",
    "wait_tty_answer",
]
