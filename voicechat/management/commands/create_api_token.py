from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from voicechat.services import api_token_create


class Command(BaseCommand):
    help = "Create an API token for USERNAME and print it (only its hash is stored)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--name", default="", help="a label shown in admin, e.g. 'laptop script'"
        )

    def handle(self, *args, username: str, name: str, **options) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(username=username)
        except User.DoesNotExist:
            raise CommandError(
                f"No user named {username!r}. Create one with: python manage.py createsuperuser"
            ) from None
        _, token = api_token_create(user=user, name=name)
        self.stdout.write(token)
