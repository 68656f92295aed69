import asyncio
import contextlib
import json
import os
import secrets
import socket

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.core.cache import cache

from voicechat.services import api_token_create
from voicechat.tests.fake_upstream import FakeRealtimeServer

# Looks like a real key so the redaction tests mean something; never valid anywhere.
PROVIDER_KEY = "sk-proj-test" + secrets.token_hex(20)


# With REDIS_URL set (make test-services), tests use that Redis under a prefix of their own.
REDIS_TEST_PREFIX = f"vctest{os.getpid()}"


@pytest.fixture(autouse=True, scope="session")
def _services_reachable():
    """When the run asked for Redis (REDIS_URL), it must be there: fail, never skip."""
    from django.conf import settings

    if settings.REDIS_URL:
        import redis

        try:
            redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=3).ping()
        except redis.RedisError as exc:
            pytest.fail(f"REDIS_URL is set but Redis does not answer: {exc}", pytrace=False)


@pytest.fixture(autouse=True, scope="session")
def _a_secret_key_of_our_own():
    """Tests run with DEBUG off, as production does, where no server starts with the public
    development key (voicechat.E301): the suite and the servers it starts share one of its own."""
    from django.test import override_settings

    with override_settings(SECRET_KEY=f"tests-{secrets.token_urlsafe(40)}"):
        yield


@pytest.fixture(autouse=True, scope="session")
def _drop_the_test_database_cleanly(django_db_setup, django_db_blocker):
    """PostgreSQL will not drop the test database while a session still uses it.

    The database thread of sync_to_async keeps its connection after the last test, and the test
    database then stayed behind on the server after every run (test_voicechat_<pid>). Ended
    here, after the last test and before pytest-django drops the database.
    """
    yield
    from django.db import connection

    if connection.vendor != "postgresql":
        return
    with django_db_blocker.unblock(), connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )


@pytest.fixture(autouse=True)
def _fast_test_settings(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    # In-process engines answer by rules unless a test asks for the language model
    # (test_local_assistant.py): protocol tests need replies that no sampling can change.
    settings.LOCAL_LLM = "none"
    if settings.REDIS_URL:
        settings.CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.core.RedisChannelLayer",
                "CONFIG": {
                    "hosts": [{"address": settings.REDIS_URL, "socket_timeout": 30}],
                    "prefix": REDIS_TEST_PREFIX,
                },
            }
        }
        # Rate-limit windows live in the (shared) cache: a fresh namespace per test, since
        # clearing a Redis cache would flush the whole database.
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": settings.REDIS_URL,
                "KEY_PREFIX": f"{REDIS_TEST_PREFIX}:{secrets.token_hex(4)}",
            }
        }
    else:
        settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
        # Rate-limit windows live in the cache: every test starts with none used.
        cache.clear()


@pytest.fixture(autouse=True)
def _fresh_process_state():
    """Each test starts with a process that is not shutting down."""
    from voicechat import lifecycle

    with lifecycle.fresh_state():
        yield


@pytest.fixture
def alice(django_user_model):
    """An ordinary user who talks to the gateway."""
    return django_user_model.objects.create_user("alice", password="alice-password-123")


@pytest.fixture
def bob(django_user_model):
    """Another user, whose conversations alice must never see."""
    return django_user_model.objects.create_user("bob", password="bob-password-123")


@pytest.fixture
def alice_token(alice) -> str:
    return api_token_create(user=alice, name="tests")[1]


@pytest.fixture
async def fake_upstream(settings):
    """A fake OpenAI Realtime server, with the gateway pointed at it."""
    async with FakeRealtimeServer() as server:
        settings.OPENAI_API_KEY = PROVIDER_KEY
        settings.OPENAI_REALTIME_URL = server.url
        settings.REALTIME_BACKEND = "openai"
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def served_gateway(ws="gateway"):
    """The real ASGI application served by uvicorn on a loopback port; yields host:port.

    ws="gateway": the gateway's own WebSocket protocol, as in production (README, "Running in
    production"), with its synchronous shortcut; any other value is uvicorn's own protocol of
    that name (e.g. "websockets-sansio", the documented alternative: the general path only).
    """
    import uvicorn

    from config.asgi import application
    from voicechat.transport.server import GatewayWebSocketProtocol

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            application,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="off",
            ws=GatewayWebSocketProtocol if ws == "gateway" else ws,
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                await asyncio.sleep(0.02)
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def gateway_server(transactional_db):
    """The gateway served by uvicorn with its own WebSocket protocol; yields host:port."""
    async with served_gateway() as address:
        yield address


class Client:
    """A WebsocketCommunicator (or SocketCommunicator) speaking JSON events to the gateway."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.communicator = communicator

    async def send(self, event: dict) -> None:
        await self.communicator.send_to(text_data=json.dumps(event))

    async def receive(self, timeout: float = 5) -> dict:
        return json.loads(await self.communicator.receive_from(timeout))

    async def receive_until(self, etype: str, timeout: float = 5) -> list[dict]:
        """Events up to and including the first of type `etype`."""
        events = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.receive(timeout)
                events.append(event)
                if event["type"] == etype:
                    return events

    async def receive_close(self, timeout: float = 5) -> tuple[list[dict], int]:
        """Events until the gateway closes the socket, and the close code."""
        events = []
        while True:
            message = await self.communicator.receive_output(timeout)
            if message["type"] == "websocket.close":
                return events, message.get("code", 1000)
            events.append(json.loads(message["text"]))


def gateway_communicator(
    *,
    token: str | None = None,
    cookie: str | None = None,
    origin: str | None = None,
    path: str = "/v1/realtime?model=gpt-realtime",
) -> WebsocketCommunicator:
    from config.asgi import application

    headers = [(b"host", b"127.0.0.1:8000")]  # as a browser sends it: the origin checks read it
    if token is not None:
        headers.append((b"authorization", f"Bearer {token}".encode()))
    if cookie is not None:
        headers.append((b"cookie", cookie.encode()))
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    communicator.scope["client"] = ("127.0.0.1", 50000)  # as an ASGI server would set it
    return communicator


class SocketCommunicator:
    """A real WebSocket client to a served gateway, with the WebsocketCommunicator methods the
    gateway tests use, so the same test runs over a real server (see `transport`)."""

    def __init__(self, url: str, headers: list[tuple[str, str]]) -> None:
        self.url, self.headers = url, headers
        self.ws = None

    async def connect(self, timeout: float = 5) -> tuple[bool, None]:
        from websockets.asyncio.client import connect as ws_connect
        from websockets.exceptions import InvalidStatus

        try:
            self.ws = await ws_connect(
                self.url, additional_headers=self.headers, open_timeout=timeout, max_size=None
            )
        except InvalidStatus:
            return False, None  # the handshake was refused (HTTP 403), as accept() never came
        return True, None

    async def send_to(self, text_data: str | None = None, bytes_data: bytes | None = None):
        await self.ws.send(text_data if text_data is not None else bytes_data)

    async def receive_from(self, timeout: float = 1) -> str:
        return await asyncio.wait_for(self.ws.recv(), timeout)

    async def receive_output(self, timeout: float = 1) -> dict:
        from websockets.exceptions import ConnectionClosed

        try:
            return {"type": "websocket.send", "text": await self.receive_from(timeout)}
        except ConnectionClosed:
            return {"type": "websocket.close", "code": self.ws.close_code}

    async def disconnect(self, code: int = 1000, timeout: float = 1) -> None:
        if self.ws is not None:
            await self.ws.close(code)


# How a gateway test reaches the application: the Channels test communicator by default; the
# tests of a module marked `over_every_transport` that open sockets with `connect` run over
# each of these, so over both paths a frame takes in production (uvicorn with the gateway's
# protocol and its shortcut; uvicorn's stock protocol, the general path only).
TRANSPORTS = ["communicator", "uvicorn-gateway", "uvicorn-stock"]


def pytest_generate_tests(metafunc) -> None:
    if (
        metafunc.definition.get_closest_marker("over_every_transport")
        and "transport" in metafunc.fixturenames
    ):
        metafunc.parametrize("transport", TRANSPORTS, indirect=True)


@pytest.fixture
def transport(request) -> str:
    return getattr(request, "param", "communicator")


@pytest.fixture
async def connect(transport):
    """Open gateway sockets in a test and close every one of them at the end."""
    communicators = []
    async with contextlib.AsyncExitStack() as stack:
        address = None
        if transport != "communicator":
            ws = "gateway" if transport == "uvicorn-gateway" else "websockets-sansio"
            address = await stack.enter_async_context(served_gateway(ws))

        async def _connect(**kwargs) -> tuple[bool, Client]:
            if address is None:
                communicator = gateway_communicator(**kwargs)
            else:
                communicator = socket_communicator(address, **kwargs)
            communicators.append(communicator)
            connected, _ = await communicator.connect(timeout=5)
            return connected, Client(communicator)

        yield _connect
        for communicator in communicators:
            await communicator.disconnect()


def socket_communicator(
    address: str,
    *,
    token: str | None = None,
    cookie: str | None = None,
    origin: str | None = None,
    path: str = "/v1/realtime?model=gpt-realtime",
) -> SocketCommunicator:
    headers = []
    if token is not None:
        headers.append(("Authorization", f"Bearer {token}"))
    if cookie is not None:
        headers.append(("Cookie", cookie))
    if origin is not None:  # the communicator's host is 127.0.0.1:8000; this server's, `address`
        headers.append(("Origin", origin.replace("127.0.0.1:8000", address)))
    return SocketCommunicator(f"ws://{address}{path}", headers)


@database_sync_to_async
def db(fn, *args, **kwargs):
    """Run a sync ORM callable from an async test."""
    return fn(*args, **kwargs)


# --- scale-out: staff, sessions, real server processes ----------------------------------------


@pytest.fixture
def staff_user(django_user_model):
    """A staff member who watches the live monitor (not a superuser)."""
    return django_user_model.objects.create_user(
        "olga", password="olga-password-123", is_staff=True
    )


def session_cookie(user) -> str:
    """A Cookie header value logging `user` in (the session lives in the shared database)."""
    from django.conf import settings
    from django.test import Client as DjangoClient

    client = DjangoClient()
    client.force_login(user)
    return f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"


@pytest.fixture
async def start_server(transactional_db):
    """Start real server processes (uvicorn or daphne) on the test database; stopped after."""
    from voicechat.tests.servers import ServerProcess, server_env

    started = []

    async def _start(kind: str = "uvicorn", *, upstream_url: str, **env: str):
        server = ServerProcess(kind, **server_env(upstream_url=upstream_url, **env))
        started.append(server)
        return await server.start()

    yield _start
    for server in started:
        # Shown by pytest only when the test failed.
        print(f"--- {server.kind} on {server.address} ---\n{server.log()}")
        server.stop()


async def finished_conversation(user, timeout: float = 15):
    """The user's latest conversation once the server has stored its end (and so every line).

    A client that closes its socket has not waited for the server to finish storing; the end
    reason is written last, after the recorder's final flush.
    """
    from voicechat.models import Conversation

    async with asyncio.timeout(timeout):
        while True:
            conversation = await db(
                lambda: Conversation.objects.filter(user=user).order_by("-started").first()
            )
            if conversation is not None and conversation.ended is not None:
                return conversation
            await asyncio.sleep(0.05)
