"""Production serving: health checks, static files without DEBUG, JSON log lines."""

import json
import re
import subprocess
import sys

import httpx
import pytest
from channels_redis.core import RedisChannelLayer

from voicechat.monitoring import health
from voicechat.tests.conftest import PROVIDER_KEY, db, free_port, session_cookie
from voicechat.tests.servers import ROOT, server_env

pytestmark = pytest.mark.django_db(transaction=True)


async def test_healthz_checks_database_and_channel_layer(async_client):
    response = await async_client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["checks"]["database"]["ok"] and body["checks"]["channel_layer"]["ok"]


async def test_healthz_is_503_with_details_when_the_channel_layer_is_down(
    async_client, monkeypatch
):
    # A real Redis layer aimed at a port where nothing listens, given to the health check
    # only (not installed globally, so no later test can meet it).
    dead = RedisChannelLayer(hosts=[f"redis://:hunter2-secret@127.0.0.1:{free_port()}/0"])
    monkeypatch.setattr(health, "get_channel_layer", lambda: dead)
    response = await async_client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["channel_layer"]["ok"] is False
    assert body["checks"]["channel_layer"]["error"]  # says what went wrong...
    assert "hunter2" not in response.content.decode()  # ...without the password


async def test_production_server_serves_static_files_and_logs_json(
    fake_upstream, staff_user, start_server, tmp_path
):
    """uvicorn with DEBUG off: collected, compressed, cacheable static files; JSON logs."""
    static_root = tmp_path / "static"
    env = server_env(upstream_url=fake_upstream.url, STATIC_ROOT=str(static_root))
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
        cwd=ROOT,
        env=env,
        check=True,
    )
    server = await start_server(
        upstream_url=fake_upstream.url, STATIC_ROOT=str(static_root), LOG_FORMAT="json"
    )
    name, value = (await db(session_cookie, staff_user)).split("=", 1)
    async with httpx.AsyncClient(
        base_url=f"http://{server.address}", cookies={name: value}
    ) as client:
        page = await client.get("/monitor/")
        assert page.status_code == 200
        # The page names its script by content hash, so it can be cached forever.
        script = re.search(r'src="(/static/voicechat/js/monitor\.[0-9a-f]{12}\.js)"', page.text)
        assert script, page.text
        response = await client.get(script.group(1), headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200
        assert "immutable" in response.headers["cache-control"]
        assert response.headers["content-encoding"] == "gzip"
        assert "class MonitorPage" in response.text
        admin_css = await client.get("/static/admin/css/base.css")
        assert admin_css.status_code == 200 and "text/css" in admin_css.headers["content-type"]
        assert (await client.get("/static/nothing-here.js")).status_code == 404

    server.process.terminate()
    await server.wait()
    records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    assert any(r["logger"].startswith("uvicorn") for r in records)
    assert PROVIDER_KEY not in server.log()
