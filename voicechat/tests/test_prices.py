"""Every model a client may pick has a price: budgets count every model, none is billed as free."""

from decimal import Decimal

import pytest
from django.core import checks

from voicechat.services import TokenCounts, UnpricedModel
from voicechat.tests.fake_upstream import USAGE

pytestmark = pytest.mark.django_db(transaction=True)


def _price_errors() -> list[checks.CheckMessage]:
    return checks.run_checks(tags=["prices"])


def test_the_default_models_are_all_priced(settings):
    assert settings.REALTIME_MODEL == "gpt-realtime-2.1"
    assert {"gpt-realtime-2.1", "gpt-realtime-2.1-mini"} <= set(settings.REALTIME_ALLOWED_MODELS)
    assert _price_errors() == []


def test_an_allowed_model_without_a_price_stops_the_server(settings):
    settings.REALTIME_ALLOWED_MODELS = [*settings.REALTIME_ALLOWED_MODELS, "gpt-realtime-3"]
    (error,) = _price_errors()
    assert error.id == "voicechat.E201" and "'gpt-realtime-3'" in error.msg
    assert error.is_serious()


def test_a_price_missing_one_rate_counts_as_no_price(settings):
    settings.REALTIME_PRICES = {
        **settings.REALTIME_PRICES,
        "gpt-realtime-2.1": {
            rate: price
            for rate, price in settings.REALTIME_PRICES["gpt-realtime-2.1"].items()
            if rate != "text_output"
        },
    }
    assert [error.id for error in _price_errors()] == ["voicechat.E201"]


def test_cost_is_never_zero_for_an_unpriced_model():
    counts = TokenCounts.from_usage(USAGE)
    with pytest.raises(UnpricedModel):
        counts.cost("gpt-realtime-3")
    # The offline engine's estimates are the only free usage.
    assert counts.cost("") == Decimal(0)
    # 300 text and 400 audio tokens uncached, 100 and 200 cached, 50 text and 150 audio out.
    assert counts.cost("gpt-realtime-2.1") == Decimal("0.024920")


async def test_an_unpriced_model_is_refused_when_the_checks_were_skipped(
    fake_upstream, alice_token, connect, settings
):
    settings.REALTIME_ALLOWED_MODELS = [*settings.REALTIME_ALLOWED_MODELS, "gpt-realtime-3"]
    connected, client = await connect(token=alice_token, path="/v1/realtime?model=gpt-realtime-3")
    assert connected
    events, code = await client.receive_close()
    assert events[-1]["error"]["code"] == "model_not_allowed"
    assert code == 4011
    assert fake_upstream.request_headers == []
