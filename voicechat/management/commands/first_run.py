import sys

from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "On a fresh install, offer to create the first (admin) user."

    def handle(self, *args, **options) -> None:
        if get_user_model().objects.exists():
            return
        if sys.stdin.isatty():
            self.stdout.write("No users yet: create the first one (it can also open /admin/).")
            call_command("createsuperuser")
        else:
            self.stdout.write(
                "No users yet. Create one with: .venv/bin/python manage.py createsuperuser"
            )
