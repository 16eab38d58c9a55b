"""kube's one create-or-replace (Lease, webhook Secret, Jobs, custom objects): a 409 Conflict
is an answer (False: someone else wrote first), any other error is raised."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client import ApiException

from timesheet_backup import kube

pytestmark = pytest.mark.unit


class Api:
    def __init__(self, status: int | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.status = status

    def create(self, namespace: str, body: dict[str, Any], **kw: Any) -> None:
        self.calls.append(("create", namespace, body["metadata"]["name"], kw))
        self._answer()

    def replace(self, name: str, namespace: str, body: dict[str, Any], **kw: Any) -> None:
        self.calls.append(("replace", namespace, name, kw))
        self._answer()

    def _answer(self) -> None:
        if self.status is not None:
            raise ApiException(status=self.status)


def body(resource_version: str | None = None) -> dict[str, Any]:
    meta = {"name": "n", "namespace": "ns",
            **({"resourceVersion": resource_version} if resource_version else {})}
    return {"metadata": meta}


@pytest.mark.parametrize(("resource_version", "verb"), [(None, "create"), ("7", "replace")])
def test_create_without_a_version_replace_with_one(resource_version: str | None,
                                                   verb: str) -> None:
    api = Api()
    assert kube._create_or_replace(api.create, api.replace, body(resource_version), 3.0)
    assert api.calls == [(verb, "ns", "n", {"_request_timeout": 3.0})]


@pytest.mark.parametrize("resource_version", [None, "7"])
def test_a_conflict_is_false(resource_version: str | None) -> None:
    api = Api(409)
    assert kube._create_or_replace(api.create, api.replace, body(resource_version), 3.0) is False


def test_other_errors_are_raised() -> None:
    api = Api(403)
    with pytest.raises(ApiException):
        kube._create_or_replace(api.create, api.replace, body(), 3.0)
