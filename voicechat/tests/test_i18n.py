"""The pages in English, Simplified Chinese and Japanese (Django i18n, locale/)."""

import ast
import gettext
import json
import re
from datetime import timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest
from django.conf import settings

from voicechat.enums import Backend, EndReason, Role
from voicechat.models import TranscriptItem
from voicechat.services import conversation_start

ROOT = Path(settings.BASE_DIR)
LOCALE = ROOT / "locale"
CATALOGS = sorted(LOCALE.glob("*/LC_MESSAGES/*.po"))


def read_po(path: Path) -> dict[str, str]:
    """msgid -> msgstr (msgstr[0] for plurals) of a .po file, header left out."""
    entries, current, field = {}, {}, None
    for line in [*path.read_text(encoding="utf-8").splitlines(), ""]:
        match = re.match(r"^(msgid|msgid_plural|msgstr(?:\[0\])?|msgstr\[\d+\]) (\".*\")$", line)
        if match:
            field = match.group(1)
            if field == "msgid" and "msgid" in current:
                current = {}
            current[field] = ast.literal_eval(match.group(2))
        elif line.startswith('"') and field:
            current[field] += ast.literal_eval(line)
        else:
            field = None
            if current.get("msgid"):
                entries[current["msgid"]] = current.get("msgstr", current.get("msgstr[0]"))
            if not line.strip():
                current = {}
    return entries


def english_texts() -> set[str]:
    return {msgid for path in CATALOGS for msgid in read_po(path)}


class VisibleText(HTMLParser):
    """Text nodes and the attributes people read (title, placeholder, aria-label), stripped."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style", "template"):
            self.skip += 1
        for name, value in attrs:
            if name in ("title", "placeholder", "aria-label") and value:
                self.texts.append(value.strip())

    def handle_endtag(self, tag):
        if tag in ("script", "style", "template"):
            self.skip -= 1

    def handle_data(self, data):
        if not self.skip and data.strip():
            self.texts.append(" ".join(data.split()))


def visible_texts(html: str) -> list[str]:
    parser = VisibleText()
    parser.feed(html)
    return parser.texts


@pytest.mark.parametrize("path", CATALOGS, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_every_string_is_translated_and_the_compiled_catalog_matches(path):
    """The .mo files are committed (no gettext tools needed to run): each must say exactly what
    its .po says. After editing a .po: manage.py compilemessages --ignore=.venv"""
    entries = read_po(path)
    assert entries, path
    assert [msgid for msgid, msgstr in entries.items() if not msgstr] == []
    assert "#, fuzzy" not in path.read_text(encoding="utf-8")
    with open(path.with_suffix(".mo"), "rb") as mo:
        compiled = gettext.GNUTranslations(mo)
    catalog = {
        key if isinstance(key, str) else key[0]: value for key, value in compiled._catalog.items()
    }
    catalog.pop("", None)  # the header
    assert catalog == entries


def strings_in_templates() -> set[str]:
    """The msgids of every {% translate %}, {% blocktranslate %} and _("...") in templates/."""
    from django.utils.translation.template import templatize

    # A quoted string as templatize writes it: u'...' or u"...".
    literal = r"u?'(?:[^'\\]|\\.)*'" + "|" + r'u?"(?:[^"\\]|\\.)*"'
    found = set()
    for path in (ROOT / "templates").rglob("*.html"):
        code = templatize(path.read_text(encoding="utf-8"), origin=str(path))
        for match in re.finditer(rf"\b(?:n?gettext|_)\(({literal})", code):
            found.add(ast.literal_eval(match.group(1)))
    return found


def strings_in_python() -> set[str]:
    """The msgids of gettext(), gettext_lazy() and _() calls in the project's Python."""
    found = set()
    for path in [*(ROOT / "voicechat").rglob("*.py"), *(ROOT / "config").rglob("*.py")]:
        if "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and getattr(node.func, "id", None) in ("gettext", "gettext_lazy", "_", "ngettext")
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.add(node.args[0].value)
    return found


def strings_in_scripts() -> set[str]:
    """The msgids of gettext("...") calls in the page scripts."""
    found = set()
    for path in (ROOT / "static").rglob("*.js"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r'\bgettext\(\s*("(?:[^"\\]|\\.)*")', text):
            found.add(json.loads(match.group(1)))
    return found


@pytest.mark.parametrize("lang", sorted(p.name for p in LOCALE.iterdir() if p.is_dir()))
def test_every_string_in_the_sources_is_in_the_catalogs(lang):
    """A string marked for translation but missing from locale/ would show in English: run
    makemessages (README, Languages) and translate it."""
    messages = LOCALE / lang / "LC_MESSAGES"
    django_po, djangojs_po = read_po(messages / "django.po"), read_po(messages / "djangojs.po")
    assert sorted((strings_in_templates() | strings_in_python()) - django_po.keys()) == []
    assert sorted(strings_in_scripts() - djangojs_po.keys()) == []


@pytest.mark.parametrize(
    ("accept", "lang", "sign_in"),
    [
        ("zh-CN,zh;q=0.9,en;q=0.8", "zh-hans", "登录"),
        ("ja,en-US;q=0.8", "ja", "ログイン"),
        ("en-GB", "en", "Sign in"),
    ],
)
def test_the_language_comes_from_accept_language(client, accept, lang, sign_in):
    response = client.get("/login/", headers={"accept-language": accept})
    html = response.content.decode()
    assert f'<html lang="{lang}">' in html
    assert f"<h1>{sign_in}</h1>" in html
    # The picker shows the language in use, each choice named in its own language.
    assert re.search(rf'<option value="{lang}" lang="{lang}" selected>', html)
    assert ">简体中文</option>" in html and ">日本語</option>" in html


def test_the_picker_choice_persists_over_accept_language(client, alice):
    client.force_login(alice)
    response = client.post("/i18n/setlang/", {"language": "ja", "next": "/history/"})
    assert response.status_code == 302 and response["Location"] == "/history/"
    cookie = response.cookies[settings.LANGUAGE_COOKIE_NAME]
    assert cookie.value == "ja"
    assert int(cookie["max-age"]) >= 30 * 24 * 3600  # outlives the browser session
    page = client.get("/history/", headers={"accept-language": "zh-CN"}).content.decode()
    assert "<h1>過去の会話</h1>" in page


def ended_conversation(user, **fields):
    conversation = conversation_start(
        user=user, backend=Backend.OPENAI, model="gpt-realtime", voice="marin"
    )
    conversation.ended = conversation.started + timedelta(seconds=75)
    conversation.end_reason = EndReason.UPSTREAM_CLOSED
    for name, value in fields.items():
        setattr(conversation, name, value)
    conversation.save()
    TranscriptItem.objects.create(
        conversation=conversation, item_id="u1", role=Role.USER, text="ni hao"
    )
    TranscriptItem.objects.create(
        conversation=conversation, item_id="a1", role=Role.ASSISTANT, text="hello"
    )
    return conversation


@pytest.mark.parametrize("lang", ["zh-hans", "ja"])
def test_no_english_is_left_on_any_page(client, staff_user, lang):
    """Every page, as a signed-in staff member sees it: no text node or readable attribute is
    still one of the English source strings (catalog entries left untranslated, or a template
    string never marked for translation that is also a catalog entry elsewhere)."""
    talk = ended_conversation(staff_user)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = lang
    anonymous = [client.get("/login/")]
    client.force_login(staff_user)
    pages = [
        *anonymous,
        client.get("/"),
        client.get("/history/"),
        client.get(f"/history/{talk.pk}/"),
        client.get(f"/history/{talk.pk}/delete/"),
        client.get("/monitor/"),
    ]
    english = english_texts() - {"voicechat", "Markdown"}
    for response in pages:
        assert response.status_code == 200, response.request["PATH_INFO"]
        html = response.content.decode()
        assert f'<html lang="{lang}">' in html
        left = [text for text in visible_texts(html) if text in english]
        assert left == [], response.request["PATH_INFO"]


def test_history_speaks_the_page_language(client, alice):
    talk = ended_conversation(alice)
    client.force_login(alice)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    page = client.get(f"/history/{talk.pk}/").content.decode()
    assert "1 分 15 秒" in page  # the length, in Chinese units
    assert "助手挂断了" in page  # why it ended (models.END_REASON_WORDS)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "ja"
    page = client.get("/history/").content.decode()
    assert "2行" in page and "1分15秒" in page and "アシスタントが切断しました" in page


@pytest.mark.parametrize(("lang", "language"), [("zh-hans", "zh"), ("ja", "ja"), ("en", None)])
def test_the_chat_page_asks_for_transcription_in_its_language(
    client, alice, settings, lang, language
):
    settings.REALTIME_LANGUAGE = "en"
    client.force_login(alice)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = lang
    html = client.get("/").content.decode()
    config = json.loads(
        re.search(r'id="chat-config" type="application/json">(.*?)</script>', html).group(1)
    )
    if language is None:
        assert config["transcription"] is None  # the server's own default stands
    else:
        assert config["transcription"] == {
            "model": settings.REALTIME_TRANSCRIPTION_MODEL,
            "language": language,
        }


@pytest.mark.parametrize(("lang", "text"), [("zh-hans", "正在听"), ("ja", "聞いています")])
def test_the_page_scripts_catalog_follows_the_language(client, lang, text):
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = lang
    script = client.get("/jsi18n/").content.decode()
    assert json.dumps(text)[1:-1] in script or text in script
    # Only this project's strings: not the admin's whole JavaScript catalog.
    assert "Available %s" not in script


# The monitor ends a conversation through the channel layer, from another thread.
@pytest.mark.django_db(transaction=True)
def test_flash_messages_speak_the_page_language(client, staff_user):
    talk = ended_conversation(staff_user)
    client.force_login(staff_user)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "zh-hans"
    page = client.post(f"/monitor/{talk.pk}/end", follow=True).content.decode()
    assert f"对话 {talk.pk} 当前未在进行" in page
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "ja"
    page = client.post(f"/history/{talk.pk}/delete/", follow=True).content.decode()
    assert "会話を削除しました。" in page


def test_the_markdown_export_is_one_language(client, alice):
    talk = ended_conversation(alice, backend=Backend.LOCAL, engine="")
    client.force_login(alice)
    client.cookies[settings.LANGUAGE_COOKIE_NAME] = "ja"
    export = client.get(f"/history/{talk.pk}/export.md").content.decode()
    assert "- Answered by: Offline assistant" in export
