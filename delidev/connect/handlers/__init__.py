"""Connect handlers of the user-facing services: parse, authenticate, call one service
function, convert (``connect/convert.py``).

One module per service family; WorkerService, which takes worker credentials instead,
lives in ``connect/worker_handler.py``. ``connect/routes.py`` mounts them by the names
re-exported here.
"""

from delidev.connect.handlers.auth import AuthHandler
from delidev.connect.handlers.base import Ctx, Handler, optional
from delidev.connect.handlers.secrets import SecretsHandler
from delidev.connect.handlers.sessions import SessionHandler
from delidev.connect.handlers.tasks import TaskHandler
from delidev.connect.handlers.todos import TodoHandler
from delidev.connect.handlers.workspaces import (
    RepositoryGroupHandler,
    RepositoryHandler,
    WorkspaceHandler,
)

__all__ = [
    "AuthHandler",
    "Ctx",
    "Handler",
    "RepositoryGroupHandler",
    "RepositoryHandler",
    "SecretsHandler",
    "SessionHandler",
    "TaskHandler",
    "TodoHandler",
    "WorkspaceHandler",
    "optional",
]
