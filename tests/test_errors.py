from __future__ import annotations

from delidev import errors
from delidev.connect.interceptors import CONNECT_CODES, connect_code
from delidev.graphql.errors import GRAPHQL_CODES, graphql_code


def _declared() -> list[type[errors.DeliDevError]]:
    # Importing the service modules brings in every error class they define.
    import delidev.services.plans  # noqa: F401

    return errors.all_error_classes()


def test_every_domain_error_is_mapped_by_both_transports() -> None:
    classes = _declared()
    assert len(classes) > 5
    # The direct children of the root are the categories: each has its own row.
    categories = {c for c in classes if errors.DeliDevError in c.__bases__}
    assert categories <= set(CONNECT_CODES), categories - set(CONNECT_CODES)
    assert categories <= set(GRAPHQL_CODES), categories - set(GRAPHQL_CODES)
    for cls in classes:
        assert (
            cls is errors.DeliDevError
            or connect_code(cls).name != "INTERNAL"
            or (issubclass(cls, errors.Internal))
        ), cls


def test_both_transports_agree_on_each_code() -> None:
    for cls in _declared():
        assert graphql_code(cls) == connect_code(cls).name, cls


def test_every_error_carries_a_spec_code() -> None:
    spec_codes = {-32600, -32601, -32602, -32603, -32001, -32002, -32003, -32004, -32005}
    for cls in _declared():
        assert cls.code in spec_codes, cls
