"""What the holder of a credential may set in their session: an API token's scope, or the site's
default scope for browser sessions (and for tokens without one of their own).

A scope only widens what the client-event policy (policy.py) lets through; the site's own limits
(its models, voices and budgets) bound every scope, the full one included. It imports nothing
of the project: models.py takes ScopeKind from here, and the policy takes Scope.
"""

from dataclasses import dataclass

from django.conf import settings
from django.db import models


class ScopeKind(models.TextChoices):
    SITE = "site", "Site default (as browser sessions)"
    CUSTOM = "custom", "Custom (the permissions below)"
    FULL = "full", "Full (all the upstream accepts, within the site's models and budgets)"


@dataclass(frozen=True)
class Scope:
    instructions: bool
    tools: bool
    prompt: bool
    transcription_models: frozenset[str]
    realtime_models: frozenset[str]
    max_output_tokens: int  # 0 = no limit beyond the model's own
    # Full scope only: fields that reach beyond the conversation (traces in the deployer's
    # OpenAI dashboard).
    tracing: bool = False


def _within_site_limits(*, transcription_models, realtime_models) -> dict:
    # A model the site has since dropped stays unusable, whatever a token says.
    return {
        "transcription_models": frozenset(transcription_models)
        & frozenset(settings.REALTIME_TRANSCRIPTION_MODELS),
        "realtime_models": frozenset(realtime_models) & frozenset(settings.REALTIME_ALLOWED_MODELS),
    }


def site_default() -> Scope:
    """The scope of browser sessions and of tokens without their own (REALTIME_CLIENT_*)."""
    return Scope(
        instructions=settings.REALTIME_CLIENT_MAY_SET_INSTRUCTIONS,
        tools=settings.REALTIME_CLIENT_MAY_SET_TOOLS,
        prompt=settings.REALTIME_CLIENT_MAY_SET_PROMPT,
        max_output_tokens=settings.REALTIME_CLIENT_MAX_OUTPUT_TOKENS,
        **_within_site_limits(
            transcription_models=settings.REALTIME_CLIENT_TRANSCRIPTION_MODELS,
            realtime_models=settings.REALTIME_ALLOWED_MODELS,
        ),
    )


def full() -> Scope:
    """Everything the upstream accepts, within the site's models (budgets apply as to anyone)."""
    return Scope(
        instructions=True,
        tools=True,
        prompt=True,
        max_output_tokens=0,
        tracing=True,
        **_within_site_limits(
            transcription_models=settings.REALTIME_TRANSCRIPTION_MODELS,
            realtime_models=settings.REALTIME_ALLOWED_MODELS,
        ),
    )


def for_token(api_token) -> Scope:
    """The scope an ApiToken grants its holder."""
    if api_token.scope_kind == ScopeKind.FULL:
        return full()
    if api_token.scope_kind == ScopeKind.CUSTOM:
        return Scope(
            instructions=api_token.may_set_instructions,
            tools=api_token.may_set_tools,
            prompt=api_token.may_set_prompt,
            max_output_tokens=api_token.max_output_tokens,
            **_within_site_limits(
                transcription_models=api_token.transcription_models,
                realtime_models=api_token.realtime_models,
            ),
        )
    return site_default()
