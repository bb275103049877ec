"""Agent sessions: the runs of an AgentTask, their output log and their TTY questions.

One module per concern; import from here (``from delidev.services import sessions``):

- ``lookups``: a session, its task and workspace; announcing that a session changed;
- ``lifecycle``: stop, start and completion of a run, and what happens when it ends;
- ``output_log``: the chunked output log (window, caps and cut, held-back tail, reads);
- ``tty``: questions an agent asks while it runs, their answers and expiry.
"""

from delidev.services.sessions.lifecycle import complete_session, start_session, stop_session
from delidev.services.sessions.lookups import (
    FINAL,
    SessionStatus,
    announce_session,
    announce_tasks_of,
    get_session,
    sessions_of,
    task_id_of_session,
    workspace_of_session,
)
from delidev.services.sessions.output_log import (
    CUT_SEQUENCE,
    HELD_SEQUENCE,
    MAX_CHUNKS_PER_CALL,
    MAX_READ_CHARS,
    PENDING_OFFSET,
    LogChunkIn,
    LogLimits,
    LogRead,
    append_log,
    check_chunks,
    cut_marker,
    read_log,
    read_stored_log,
)
from delidev.services.sessions.tty import (
    close_pending_tty,
    create_tty_request,
    end_questions,
    expire_tty_requests,
    get_tty_request,
    list_tty_requests,
    submit_tty_input,
    visible_response,
)

__all__ = [
    "CUT_SEQUENCE",
    "FINAL",
    "HELD_SEQUENCE",
    "MAX_CHUNKS_PER_CALL",
    "MAX_READ_CHARS",
    "PENDING_OFFSET",
    "LogChunkIn",
    "LogLimits",
    "LogRead",
    "SessionStatus",
    "announce_session",
    "announce_tasks_of",
    "append_log",
    "check_chunks",
    "close_pending_tty",
    "complete_session",
    "create_tty_request",
    "cut_marker",
    "end_questions",
    "expire_tty_requests",
    "get_session",
    "get_tty_request",
    "list_tty_requests",
    "read_log",
    "read_stored_log",
    "sessions_of",
    "start_session",
    "stop_session",
    "submit_tty_input",
    "task_id_of_session",
    "visible_response",
    "workspace_of_session",
]
