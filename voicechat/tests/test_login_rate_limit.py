"""Password guessing is cut off: django-axes locks a username+address after repeated failures."""

import pytest
from axes.utils import reset

pytestmark = pytest.mark.django_db

LOGIN_URL = "/admin/login/"


def _login(client, password: str):
    return client.post(LOGIN_URL, {"username": "staff", "password": password, "next": "/admin/"})


@pytest.fixture
def staff(django_user_model):
    """A staff member whose password someone is guessing."""
    return django_user_model.objects.create_superuser("staff", password="right-password-123")


def test_lockout_after_repeated_failures_and_reset(client, staff, settings):
    settings.AXES_FAILURE_LIMIT = 3
    for _ in range(2):
        assert _login(client, "wrong").status_code == 200  # the form again, with an error
    locked = _login(client, "wrong")
    assert locked.status_code == 429
    assert "Too many failed logins" in locked.content.decode()
    # Even the right password is refused while locked out.
    assert _login(client, "right-password-123").status_code == 429
    reset(username="staff")
    assert _login(client, "right-password-123").status_code == 302


def test_success_resets_the_failure_count(client, staff, settings):
    settings.AXES_FAILURE_LIMIT = 3
    _login(client, "wrong")
    _login(client, "wrong")
    assert _login(client, "right-password-123").status_code == 302
    client.logout()
    _login(client, "wrong")
    _login(client, "wrong")
    assert _login(client, "right-password-123").status_code == 302
