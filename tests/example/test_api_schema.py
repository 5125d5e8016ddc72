"""The example's OpenAPI document and Swagger UI, from the running server: both key schemes
are described, Swagger UI's files come from this server (never a CDN), and Schemathesis,
fuzzing each operation from the document with a valid key, another client's key and none,
finds no 5xx and no answer the document does not describe."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from model_bakery import baker

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def get(url: str) -> tuple[str, bytes]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return str(response.headers["Content-Type"]), response.read()


def test_the_schema_lists_both_key_schemes(example_server, db):
    content_type, body = get(f"{example_server}/api/schema/?format=json")
    assert content_type.startswith("application/vnd.oai.openapi+json")
    schema = json.loads(body)
    schemes = schema["components"]["securitySchemes"]
    assert schemes["LLMClientAPIKeyAuthorization"] | {"description": ""} == {
        "type": "http",
        "scheme": "bearer",
        "description": "",
    }
    assert schemes["LLMClientAPIKeyHeader"] | {"description": ""} == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "",
    }
    chat = schema["paths"]["/v1/clients/{llm_client}/chat/completions"]["post"]
    messages = schema["paths"]["/anthropic/clients/{llm_client}/v1/messages"]["post"]
    for operation in (chat, messages):
        assert {"LLMClientAPIKeyAuthorization": []} in operation["security"]
        assert {"LLMClientAPIKeyHeader": []} in operation["security"]


def test_swagger_ui_is_served_from_this_server(example_server, db):
    page = get(f"{example_server}/api/docs/")[1].decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert any(asset.endswith("swagger-ui-bundle.js") for asset in assets)
    for asset in assets:
        assert asset.startswith("/static/"), f"{asset} is not served by the example"
        assert get(f"{example_server}{asset}")[1]
    assert "/api/schema/" in page


def schemathesis() -> Path:
    command = Path(sys.executable).parent / "st"
    if not command.exists():
        pytest.skip("needs schemathesis (the test extra)")
    return command


@pytest.mark.parametrize("caller", ["its key", "another client's key", "no key"])
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(
    example_server, make_key, protected_client, caller, tmp_path
):
    st = schemathesis()
    _, plaintext = make_key(protected_client)
    _, other = make_key(baker.make_recipe("tests.llm_client", slug="other-bot"))
    headers: dict[str, Any] = {
        "its key": ["-H", f"Authorization: Bearer {plaintext}"],
        "another client's key": ["-H", f"Authorization: Bearer {other}"],
        "no key": [],
    }
    # Every operation on the protected client: the slug is fixed, the rest generated.
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'[parameters]\n"path.llm_client" = "{protected_client.slug}"\n')
    run = subprocess.run(
        [
            str(st),
            "--config-file",
            str(config),
            "run",
            f"{example_server}/api/schema/?format=json",
            *headers[caller],
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--phases",
            "examples,fuzzing",
            "--max-examples",
            "8",
            "--seed",
            "27",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--generation-with-security-parameters",
            "false",
            "--request-timeout",
            "10",
            "--no-color",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
