from django.conf import settings
from django.core.management.base import BaseCommand

from voicechat.records.recordings import recordings_orphans_delete, recordings_purge


class Command(BaseCommand):
    help = (
        "Erase recordings (files and rows) older than RECORDING_RETENTION_DAYS days, and the "
        "files of conversations deleted outright (admin, or with their user). Run it daily, "
        "from cron or a systemd timer."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="keep this many days instead of RECORDING_RETENTION_DAYS",
        )

    def handle(self, *args, days: int | None, **options) -> None:
        days = settings.RECORDING_RETENTION_DAYS if days is None else days
        erased = recordings_purge(days=days)
        self.stdout.write(f"{erased} recording(s) older than {days} days erased.")
        orphans = recordings_orphans_delete()
        self.stdout.write(f"{orphans} file(s) of conversations deleted outright erased.")
