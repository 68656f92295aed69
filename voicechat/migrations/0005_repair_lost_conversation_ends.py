"""Conversations ended as process_lost before 0c6cd54 stored their end before their start.

Their end was their last heartbeat, stamped a moment before `started`, so they read as 0 s
long. They are re-ended at their last sign of life, as services.conversations_end_stale() now
does: the later of the heartbeat and the last transcript line, never before the start. (The
expression is repeated here: a migration must not depend on code that may change.)
"""

from django.db import migrations
from django.db.models import F, OuterRef, Subquery
from django.db.models.functions import Coalesce, Greatest


def repair(apps, schema_editor):
    Conversation = apps.get_model("voicechat", "Conversation")
    TranscriptItem = apps.get_model("voicechat", "TranscriptItem")
    last_line = (
        TranscriptItem.objects.filter(conversation=OuterRef("pk"))
        .order_by("-updated")
        .values("updated")[:1]
    )
    Conversation.objects.filter(end_reason="process_lost", ended__lt=F("started")).update(
        ended=Greatest(
            "started",
            Coalesce("heartbeat", "started"),
            Coalesce(Subquery(last_line), "started"),
        )
    )


class Migration(migrations.Migration):
    dependencies = [
        ("voicechat", "0004_conversation_engine"),
    ]

    operations = [migrations.RunPython(repair, migrations.RunPython.noop)]
