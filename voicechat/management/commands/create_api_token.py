from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from voicechat.access.scopes import ScopeKind
from voicechat.services import api_token_create


class Command(BaseCommand):
    help = (
        "Create an API token for USERNAME and print it (only its hash is stored). Without scope "
        "flags its holder may set what browser sessions may (the site default scope)."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("username")
        parser.add_argument(
            "--name", default="", help="a label shown in admin, e.g. 'laptop script'"
        )
        scope = parser.add_argument_group(
            "scope", "what the holder may set in their session (any of these: a custom scope)"
        )
        scope.add_argument(
            "--full-scope",
            action="store_true",
            help="everything the upstream accepts, within the site's models and budgets",
        )
        scope.add_argument("--instructions", action="store_true", help="may set instructions")
        scope.add_argument("--tools", action="store_true", help="may declare tools")
        scope.add_argument("--prompt", action="store_true", help="may use a stored prompt")
        scope.add_argument(
            "--transcription-model",
            action="append",
            default=[],
            metavar="MODEL",
            help="may pick this transcription model (repeatable; from "
            "REALTIME_TRANSCRIPTION_MODELS)",
        )
        scope.add_argument(
            "--model",
            action="append",
            default=[],
            metavar="MODEL",
            help="may connect with ?model=MODEL (repeatable; from REALTIME_ALLOWED_MODELS; "
            "default: all of them)",
        )
        scope.add_argument(
            "--max-output-tokens",
            type=int,
            default=0,
            metavar="N",
            help="may set max_output_tokens up to N, which is also the session's default "
            "(0: no limit)",
        )

    def handle(self, *args, username: str, name: str, full_scope: bool, **options) -> None:
        User = get_user_model()
        try:
            user = User.objects.get(username=username)
        except User.DoesNotExist:
            raise CommandError(
                f"No user named {username!r}. Create one with: python manage.py createsuperuser"
            ) from None
        permissions = self._custom_permissions(**options)
        if full_scope and permissions:
            raise CommandError("--full-scope already allows everything: drop the other flags.")
        if full_scope:
            _, token = api_token_create(user=user, name=name, scope_kind=ScopeKind.FULL)
        elif permissions:
            _, token = api_token_create(
                user=user,
                name=name,
                scope_kind=ScopeKind.CUSTOM,
                may_set_instructions=options["instructions"],
                may_set_tools=options["tools"],
                may_set_prompt=options["prompt"],
                transcription_models=options["transcription_model"],
                realtime_models=options["model"] or settings.REALTIME_ALLOWED_MODELS,
                max_output_tokens=options["max_output_tokens"],
            )
        else:
            _, token = api_token_create(user=user, name=name)
        self.stdout.write(token)

    def _custom_permissions(self, **options) -> list[str]:
        """The scope flags given (checked against the site's lists)."""
        for flag, chosen, available in (
            (
                "--transcription-model",
                options["transcription_model"],
                settings.REALTIME_TRANSCRIPTION_MODELS,
            ),
            ("--model", options["model"], settings.REALTIME_ALLOWED_MODELS),
        ):
            unknown = sorted(set(chosen) - set(available))
            if unknown:
                raise CommandError(
                    f"{flag} {', '.join(unknown)}: not offered by this site; choose from "
                    + ", ".join(available)
                )
        if options["max_output_tokens"] < 0:
            raise CommandError("--max-output-tokens must be 0 (no limit) or more.")
        flags = (
            "instructions",
            "tools",
            "prompt",
            "transcription_model",
            "model",
            "max_output_tokens",
        )
        return [flag for flag in flags if options[flag]]
