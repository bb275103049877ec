"""Domain errors: the only exceptions the service layer raises.

Each error carries the numeric code of the specification (``code``), written here only:
a transport that needs a number reads it from the class of the same meaning
(``InvalidArgument.code``), and ``tests/test_errors.py`` refuses a ``-32xxx`` anywhere else.
Each transport maps every class here to its own code in exactly one table
(``delidev/connect/interceptors.py``, ``delidev/graphql/errors.py``). What the ORM raises
becomes one of these in one place too: ``delidev/services/common.py::orm_errors``.
A message is safe to show to the caller: it never holds a secret or a trace.

    DeliDevError
    ├── InvalidArgument         -32602  bad input (names the field)
    ├── Unauthenticated         -32001
    ├── PermissionDenied        -32002
    ├── NotFound                -32003  (also: another tenant's object)
    ├── AlreadyExists           -32600
    ├── FailedPrecondition      -32005  illegal state transition
    ├── Conflict                -32005  lost a race / stale lease
    ├── WorkerUnavailable       -32004
    ├── Unavailable             -32603  a service we depend on (the OIDC provider) is down
    ├── Unimplemented           -32601
    └── Internal                -32603
"""

from __future__ import annotations


class DeliDevError(Exception):
    """Base of every domain error."""

    code: int = -32603

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(DeliDevError):
    code = -32602


class Unauthenticated(DeliDevError):
    code = -32001


class PermissionDenied(DeliDevError):
    code = -32002


class NotFound(DeliDevError):
    code = -32003


class AlreadyExists(DeliDevError):
    code = -32600


class FailedPrecondition(DeliDevError):
    code = -32005


class Conflict(DeliDevError):
    code = -32005


class WorkerUnavailable(DeliDevError):
    code = -32004


class Unavailable(DeliDevError):
    code = -32603


class Unimplemented(DeliDevError):
    code = -32601


class Internal(DeliDevError):
    code = -32603


def all_error_classes() -> list[type[DeliDevError]]:
    """Every concrete domain error class (used by the mapping-completeness tests)."""
    found: list[type[DeliDevError]] = []
    pending: list[type[DeliDevError]] = [DeliDevError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found
