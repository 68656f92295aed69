"""Staff pages of the live monitor: the list of open conversations, and "end conversation"."""

from asgiref.sync import async_to_sync
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from voicechat.monitoring import dashboard, live


@staff_member_required
def monitor_page(request: HttpRequest) -> HttpResponse:
    """Open conversations on every process; the page's script then follows them live."""
    return render(
        request,
        "voicechat/monitor.html",
        {
            "conversations": live.live_conversations(),
            "health": dashboard.health(),
            "socket_path": "/ws/monitor",
            "nav": "monitor",
        },
    )


@staff_member_required
def monitor_health(request: HttpRequest) -> HttpResponse:
    """The dashboard's numbers, as the HTML the monitor page swaps in every few seconds."""
    return render(request, "voicechat/monitor_health.html", {"health": dashboard.health()})


@staff_member_required
@require_POST
def monitor_end(request: HttpRequest, pk: int) -> HttpResponse:
    """End one conversation, whichever server process holds it."""
    if async_to_sync(live.request_end)(pk, by=request.user.get_username()):
        messages.success(request, _("Asked conversation %(id)s to end.") % {"id": pk})
    else:
        messages.warning(
            request, _("Conversation %(id)s is not open (or its server is gone).") % {"id": pk}
        )
    return redirect("monitor")
