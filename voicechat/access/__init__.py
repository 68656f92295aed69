"""Who may open a conversation, and what they may do in it.

Owns authentication (session cookie with origin check, API tokens), what each credential may set
(scopes), per-user connection rate limits, daily budgets, and revocation: open sockets whose
token, user or session is withdrawn are ended. It knows nothing of sockets or upstreams.

May import: the app's core modules (voicechat.models, voicechat.enums, ...) only.
"""
