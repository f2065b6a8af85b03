"""The OpenAPI document (`api/openapi.py`) names every route the API serves, and only
those, each with its errors in the API's one error shape."""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.core.result import Ok
from starlette.routing import Route

from mams.api.app import Api
from mams.api.openapi import ROUTES, document


def served() -> set[tuple[str, str]]:
    api = Api(pool=None, store=None, live=None)  # type: ignore[arg-type]  # routes only
    out = set()
    for route in api.routes():
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                out.add((method, route.path))
    return out


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in node.values()))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def test_every_route_is_documented_and_nothing_else() -> None:
    assert served() == set(ROUTES)
    doc = document()
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served()


def test_every_operation_has_its_errors_and_every_reference_resolves() -> None:
    doc = document()
    ids = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            ids.append(op["operationId"])
            statuses = set(op["responses"])
            assert {"401", "429"} <= statuses, (method, path)
            for status, answer in op["responses"].items():
                if status.startswith("4"):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorOut"}
            if method == "post":
                assert {"413", "422"} <= statuses, path
            for name in (p[1:-1] for p in path.split("/") if p.startswith("{")):
                assert any(p["name"] == name and p["in"] == "path" for p in op["parameters"])
    assert len(ids) == len(set(ids))
    names = set(doc["components"]["schemas"])
    for ref in refs(doc):
        assert ref.removeprefix("#/components/schemas/") in names, ref
    # Money is a JSON number in answers (a numeric string is read too), never a string only.
    offer = doc["components"]["schemas"]["OfferOut"]["properties"]["unit_price"]
    assert {"type": "number"} in offer["anyOf"]


def test_the_document_is_openapi_3_1_that_schemathesis_loads() -> None:
    doc = json.loads(json.dumps(document()))  # plain JSON all the way down
    assert doc["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(doc)
    loaded = set()
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        op = result.ok()
        loaded.add((op.method.upper(), op.path))
    assert loaded == set(ROUTES)
