"""The dashboard's files as the API serves them (no browser needed; tests/browser drives them in Chromium)."""

from __future__ import annotations

import re
from pathlib import Path

from api.ui import STATIC


def test_root_redirects_to_the_dashboard_and_it_is_served_with_its_security_headers(client):
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    r = client.get("/ui/")
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert '<script type="module" src="js/main.js">' in r.text
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-content-type-options"] == "nosniff"
    js = client.get("/ui/js/main.js")
    assert js.status_code == 200 and "javascript" in js.headers["content-type"]
    assert client.get("/ui/js/nope.js").status_code == 404
    assert not [
        p
        for p in client.get("/openapi.json").json()["paths"]
        if not p.startswith(("/v1", "/healthz", "/readyz", "/metrics"))
    ]


def test_every_module_import_resolves_to_a_shipped_file():
    scripts = sorted(STATIC.rglob("*.js"))
    assert len(scripts) >= 8
    for script in scripts:
        for target in re.findall(r'^import .*? from "(\.[^"]+)";$', script.read_text(), flags=re.M):
            assert (script.parent / target).resolve().is_file(), (
                f"{script.relative_to(STATIC)} imports {target}"
            )
    html = (STATIC / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"#][^"]*)"', html):
        assert (STATIC / ref).is_file(), ref


def test_no_markup_is_built_from_strings():
    """Values from the API reach the page as text nodes only (dom.js), never through innerHTML."""
    for script in STATIC.rglob("*.js"):
        text = script.read_text()
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text and "eval(" not in text, (
            script.name
        )


def test_the_static_files_are_package_data():
    pyproject = (Path(__file__).resolve().parents[2] / "pyproject.toml").read_text()
    assert 'api = ["ui/static/*", "ui/static/**/*"]' in pyproject
