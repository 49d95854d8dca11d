"""/docs and /redoc work without internet: every script, style sheet and image they load is served here."""

import re

import pytest
from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(tmp_path_factory, monkeypatch_module):
    monkeypatch_module.setenv("BDSCREEN_STORAGE", str(tmp_path_factory.mktemp("docs")))
    from worker.core.settings import use_settings

    use_settings(None)  # read the environment set above
    from service.main import app

    return TestClient(app)  # not entered: the lifespan (reconcile loop) is not needed to serve pages


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_documentation_pages_load_nothing_from_outside(client, page):
    html = client.get(page).text
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""url:\s*['"]([^'"]+)['"]""", html)  # the OpenAPI document Swagger UI fetches
    assert urls, html
    assert not [u for u in urls if re.match(r"(https?:)?//", u)], urls
    assert not re.search(r"https?://(?!127\.0\.0\.1|localhost)", html), html
    for url in urls:
        assert client.get(url).status_code == 200, url
    assert client.get("/openapi.json").status_code == 200
