"""Store the transcripts spilled to TRANSCRIPT_SPILL_DIR while the database was away."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils.timezone import now

from voicechat.records.recorder import REFUSED_SUFFIX, SPILL_SUFFIX, replay_spill_file

# A file being replayed is renamed first, so a recorder still spilling that conversation starts a
# new file rather than appending to one half read; a run that stopped half way left it so named.
REPLAYING = ".replaying"


def spill_files(directory: Path) -> list[Path]:
    """The files to replay, oldest first: those a stopped run left, then the spilled ones."""
    leftovers = sorted(directory.glob(f"conversation-*{SPILL_SUFFIX}{REPLAYING}"))
    spilled = [
        path
        for path in sorted(directory.glob(f"conversation-*{SPILL_SUFFIX}"))
        if not path.name.endswith(REFUSED_SUFFIX)
    ]
    return leftovers + spilled


class Command(BaseCommand):
    help = (
        "Store the transcripts that conversations spilled to TRANSCRIPT_SPILL_DIR while the "
        "database was unavailable. Safe to run again: nothing is stored twice."
    )

    def handle(self, *args, **options) -> None:
        directory = Path(settings.TRANSCRIPT_SPILL_DIR)
        files = spill_files(directory) if directory.is_dir() else []
        if not files:
            self.stdout.write(f"nothing to replay in {directory}")
            return
        failed = 0
        for path in files:
            name = path.name.removesuffix(REPLAYING)
            if not path.name.endswith(REPLAYING):
                path = path.rename(path.with_name(name + REPLAYING))
            try:
                with transaction.atomic():
                    applied = replay_spill_file(path, source=name)
            except Exception as exc:
                failed += 1
                self.stderr.write(f"{path}: not replayed ({exc}); it is kept for the next run")
                continue
            path.rename(path.with_name(f"{name}.replayed-{now():%Y%m%dT%H%M%S%f}"))
            self.stdout.write(f"{name}: {applied} batch(es) stored")
        for refused in sorted(directory.glob(f"conversation-*{REFUSED_SUFFIX}")):
            self.stderr.write(f"{refused}: rows the database refused on their own, left for you")
        if failed:
            raise CommandError(f"{failed} file(s) could not be replayed")
