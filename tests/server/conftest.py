"""Fixtures of the service tests in this folder: module-scoped, so each test file gets its
own index (``server_helpers.build_corpus``), service and client, and files share no state."""

from __future__ import annotations

import pytest

from server_helpers import BASE, build_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, synth_small, tiny_models):
    return build_corpus(tmp_path_factory.mktemp("serve"), synth_small, tiny_models)


@pytest.fixture(scope="module")
def service(corpus):
    from resedis.server.engine import SearchService

    svc = SearchService(corpus["db"])
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def client(corpus, service):
    from fastapi.testclient import TestClient

    from resedis.server import ServeConfig, create_app

    app = create_app(ServeConfig(db=corpus["db"]), service=service)
    with TestClient(app, base_url=BASE) as c:
        yield c
