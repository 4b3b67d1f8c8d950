"""worker/numbers.py: E.164 keys and time zones, the fast path held to plain phonenumbers on many numbers;
the producer's key and stored ``nk``, and gate.lua reading it."""

from __future__ import annotations

import random

import phonenumbers
import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType, ValidationResult
from phonenumbers.timezone import time_zones_for_number

from worker import numbers
from worker.errors import InvalidRequest, SettingsError
from worker.ledger.producer import Producer
from worker.ledger.states import State
from worker.ledger.transitions import Ledger
from worker.numbers import key_and_e164, normalise, number_key, zone_for, zones
from worker.settings import Settings, load_settings
from worker.store import scripts
from worker.store.keys import Keys

REGIONS = [None, "CN", "US", "GB", "DE", "JP", "BR", "AR", "RU", "IT", "AU", "IN", "FR", "MX", "SG", "HK", "CA", "KZ"]


def reference(text: str, region: str | None) -> str | None:
    """Plain phonenumbers: E.164 when it parses and is a possible number, else None."""
    try:
        num = phonenumbers.parse(text, region)
    except NumberParseException:
        return None
    if phonenumbers.is_possible_number_with_reason(num) != ValidationResult.IS_POSSIBLE:
        return None
    return str(phonenumbers.format_number(num, PhoneNumberFormat.E164))


def ours(text: str, region: str | None) -> str | None:
    try:
        return normalise(text, region)
    except ValueError:
        return None


def _examples() -> list[str]:
    """Real example numbers of every region and type, in E.164."""
    out = []
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE,
                     PhoneNumberType.VOIP, PhoneNumberType.PREMIUM_RATE):
            num = phonenumbers.example_number_for_type(region, kind)
            if num is not None:
                out.append(phonenumbers.format_number(num, PhoneNumberFormat.E164))
    return out


def _generated(seed: int = 18) -> list[tuple[str, str | None]]:
    """(written number, default region): international, IDD and national shapes, valid and not."""
    rnd = random.Random(seed)
    cases: list[tuple[str, str | None]] = []
    examples = _examples()
    for e164 in examples:
        num = phonenumbers.parse(e164)
        region = phonenumbers.region_code_for_number(num)
        national = phonenumbers.format_number(num, PhoneNumberFormat.NATIONAL)
        nsn = phonenumbers.national_significant_number(num)
        cases += [(e164, None), (e164[1:], region), (nsn, region), ("".join(c for c in national if c.isdigit()),
                                                                   region), (e164[1:], None)]
        cases += [(e164, rnd.choice(REGIONS)), ("00" + e164[1:], rnd.choice(REGIONS)),
                  ("011" + e164[1:], "US"), (nsn, rnd.choice(REGIONS))]
        # One digit more, one less: the fast path must send the lengths it does not know to phonenumbers.
        cases += [(e164 + str(rnd.randrange(10)), None), (e164[:-1], None), (nsn[:-1], region)]
    for cc in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        for _ in range(25):
            digits = "".join(rnd.choice("0123456789") for _ in range(rnd.randrange(1, 18)))
            cases += [(f"+{cc}{digits}", None), (f"00{cc}{digits}", rnd.choice(REGIONS)),
                      (f"{cc}{digits}", rnd.choice(REGIONS)), (digits, rnd.choice(REGIONS))]
    for _ in range(3000):  # China: mobiles, landlines with and without the trunk 0, carrier-code prefixes
        mobile = "1" + rnd.choice("3456789") + "".join(rnd.choice("0123456789") for _ in range(9))
        land = rnd.choice(["10", "20", "21", "755", "571", "898"]) + "".join(
            rnd.choice("0123456789") for _ in range(rnd.choice([7, 8])))
        cases += [(mobile, "CN"), ("+86" + mobile, None), ("0086" + mobile, "CN"), ("86" + mobile, "CN"),
                  ("0" + land, "CN"), (land, "CN"), ("+860" + land, None), ("12593" + mobile, "CN"),
                  ("17951" + "0" + land, "CN"), (mobile, "US")]
    return cases


CASES = _generated()


def test_fast_path_gives_what_phonenumbers_gives() -> None:
    wrong = [(text, region, ours(text, region), reference(text, region)) for text, region in CASES
             if ours(text, region) != reference(text, region)]
    assert not wrong, f"{len(wrong)} of {len(CASES)} differ, e.g. {wrong[:10]}"
    assert len(CASES) > 30_000


def test_without_the_libraries_internals_parse_itself_gives_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """Should a phonenumbers release move the internals the medium path uses, parse itself takes over."""
    monkeypatch.setattr(numbers, "_P", False)
    numbers._slow.cache_clear()
    sample = CASES[::9]
    assert [ours(t, r) for t, r in sample] == [reference(t, r) for t, r in sample]
    assert numbers._slow.cache_info().misses > 100
    with pytest.raises(ValueError, match="no country calling code"):
        number_key("+999 123 456")
    assert number_key("8899", "CN") == "8899"


def test_fast_path_takes_the_common_shapes_without_phonenumbers() -> None:
    numbers._slow.cache_clear()
    rnd = random.Random(7)
    common = []
    for _ in range(2000):
        m = "13" + "".join(rnd.choice("0123456789") for _ in range(9))
        us = "+1212555" + f"{rnd.randrange(10_000):04d}"
        common += [("+86" + m, None), ("0086" + m, "CN"), (m, "CN"), (us, "CN")]
    for text, region in common:
        assert ours(text, region) == reference(text, region)
    assert numbers._slow.cache_info().misses == 0, "a common shape went to phonenumbers"


@given(st.text("0123456789", min_size=1, max_size=20), st.sampled_from(REGIONS), st.sampled_from(["", "+", "00"]))
@hyp_settings(max_examples=600, deadline=None)
def test_any_digits_agree_with_phonenumbers(digits: str, region: str | None, prefix: str) -> None:
    text = prefix + digits
    assert ours(text, region) == reference(text, region)


def _library_zones(num: phonenumbers.PhoneNumber) -> tuple[str, ...]:
    return tuple(z for z in time_zones_for_number(num) if z != "Etc/Unknown")


def _expected_zones(num: phonenumbers.PhoneNumber) -> tuple[str, ...]:
    """phonenumbers' answer; for an invalid number of a single-zone country, that country's zone (the one
    documented difference: numbers are checked for possibility, not validity)."""
    if phonenumbers.is_valid_number(num):
        return _library_zones(num)
    uniform = numbers._TZ_UNIFORM.get(str(num.country_code))
    return uniform if uniform is not None else _library_zones(num)


@pytest.mark.parametrize("e164", sorted(set(_examples())))
def test_zones_of_example_numbers_are_phonenumbers_zones(e164: str) -> None:
    num = phonenumbers.parse(e164)
    assert phonenumbers.is_valid_number(num)
    assert zones(e164) == _library_zones(num)
    assert zones(e164[1:]) == _library_zones(num)  # a key without the '+'


def test_zones_of_generated_possible_numbers() -> None:
    seen = 0
    for text, region in CASES[::5]:
        e164 = ours(text, region)
        if e164 is None:
            continue
        seen += 1
        # The number phonenumbers parsed from the text (its E.164 does not always parse back to itself).
        num = phonenumbers.parse(text, region)
        assert zones(e164) == _expected_zones(num), (text, region, e164)
    assert seen > 1000


def test_one_person_in_three_forms() -> None:
    forms = ["+8613800000001", "008613800000001", "13800000001", "8613800000001", " +86 (138) 0000-0001 ",
             "0086 138 0000 0001"]
    assert {normalise(f, "CN") for f in forms} == {"+8613800000001"}
    assert {number_key(f, "CN") for f in forms} == {"8613800000001"}
    assert key_and_e164("13800000001", "CN") == ("8613800000001", "+8613800000001")
    # Without a default region, national forms keep today's key (their digits) and no E.164.
    assert key_and_e164("13800000001", None) == ("13800000001", None)
    assert number_key("008613800000001") == "008613800000001"
    assert number_key("+8613800000001") == "8613800000001"
    # Landlines: the trunk 0 is no part of E.164, also written after the country code.
    assert number_key("0755 1234 5678", "CN") == number_key("+86 0755 1234 5678") == "8675512345678"
    # US: 011 is its international prefix, not 00.
    assert normalise("011 86 138 0000 0001", "US") == "+8613800000001"
    assert normalise("(212) 555-0100", "US") == "+12125550100" == normalise("1 212 555 0100", "US")


def test_what_is_refused_and_what_keeps_its_digits() -> None:
    # Today's format rule, named.
    for bad in ("", "++138", "138a", "١٣٨", "1" * 33):
        with pytest.raises(ValueError, match="1-32 digits"):
            number_key(bad, "CN")
    # Written internationally but not a possible number: refused, the rule says why.
    with pytest.raises(ValueError, match="no country calling code"):
        number_key("+999 123 456")
    with pytest.raises(ValueError, match=r"\+86 \(CN\) numbers have 7, 8, 9, 10, 11, 12 digits.*this one has 5"):
        number_key("+86 12345")
    with pytest.raises(ValueError, match="no country calling code"):
        number_key("00999123456", "CN")  # CN's international prefix: an international number
    # ... but the do-not-call list takes them as their digits (an entry is never refused for that).
    assert number_key("+999 123 456", strict=False) == "999123456"
    # National numbers that are not possible in the region (the seed's extension 8899): their digits.
    assert number_key("8899", "CN") == "8899" and number_key("8899") == "8899"
    with pytest.raises(ValueError, match="possible phone number of region CN"):
        normalise("8899", "CN")
    with pytest.raises(ValueError, match="DIALER_DEFAULT_REGION"):
        normalise("13800000001")


def test_time_zones_single_and_several() -> None:
    assert zones("+8613800000001") == ("Asia/Shanghai",)
    assert zones("+12125550100") == ("America/New_York",)  # area code 212
    assert zones("+16505550100") == ("America/Los_Angeles",)  # area code 650
    assert zones("+13125550100") == ("America/Chicago",)  # area code 312
    assert len(zones("+18005550100")) > 10  # toll-free: the whole NANP
    assert len(zones("+79123456789")) > 5  # Russia's mobiles are not geographical: the country's zones
    assert zones("+74951234567") == ("Europe/Moscow",)  # a Moscow landline
    assert zones("+8613800000001123") == ("Asia/Shanghai",)  # not valid (too long for a mobile), but possible
    assert zones("+80012345678") == ()  # international freephone: no zone
    assert zone_for("+8613800000001") == "Asia/Shanghai"
    assert zone_for("+18005550100", "UTC") == "UTC" and zone_for("+18005550100") is None
    assert zone_for("+80012345678", "Asia/Shanghai") == "Asia/Shanghai"


def test_default_region_setting_is_checked_naming_it(settings: Settings) -> None:
    assert load_settings(redis_url=settings.redis_url, default_region="cn").default_region == "CN"
    assert load_settings(redis_url=settings.redis_url, default_region="").default_region is None
    with pytest.raises(SettingsError, match="DIALER_DEFAULT_REGION: must be an ISO 3166 alpha-2"):
        load_settings(redis_url=settings.redis_url, default_region="XX")


# --- the producer's key and gate.lua ---------------------------------------------------------------


def _body(called: str) -> dict[str, object]:
    return {"called": called, "playList": [{"voiceId": "100001"}]}


async def test_producer_keys_a_campaign_job_by_e164_and_dials_the_number_given(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    cn = settings.model_copy(update={"default_region": "CN"})
    producer, ledger = Producer(redis_client, cn), Ledger(redis_client, cn)
    first = await producer.enqueue(_body("13800000001"), campaign="spring")
    assert (first.job_id, first.status) == ("spring:8613800000001", "accepted")
    for other in ("+8613800000001", "008613800000001", "8613800000001"):
        again = await producer.enqueue(_body(other), campaign="spring")
        assert (again.job_id, again.status) == ("spring:8613800000001", "duplicate"), other
    rec = await ledger.get("spring:8613800000001")
    assert rec is not None and rec.called == "13800000001"  # dialled as given, not rewritten
    key = Keys(cn.key_prefix).job("spring:8613800000001")
    assert await redis_client.hget(key, "nk") == b"8613800000001"
    # A number whose digits are its key stores nothing extra.
    await producer.enqueue(_body("+8613800000002"), campaign="spring")
    assert await redis_client.hget(Keys(cn.key_prefix).job("spring:8613800000002"), "nk") is None
    # Jobs without a campaign are neither keyed nor checked: the seed's extension 8899 still goes.
    assert (await producer.enqueue(_body("8899"))).status == "accepted"
    assert (await producer.enqueue(_body("8899"), campaign="spring")).job_id == "spring:8899"


async def test_producer_refuses_an_impossible_international_campaign_number_naming_called(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    producer = Producer(redis_client, settings)
    with pytest.raises(InvalidRequest) as exc:
        await producer.enqueue(_body("+99912345"), campaign="spring")
    assert [(e.field, "country calling code" in e.rule) for e in exc.value.errors] == [("called", True)]
    results = await producer.enqueue_many([_body("+8612345"), _body("+8613800000009")], campaign="spring")
    assert [r.status for r in results] == ["rejected", "accepted"]
    assert results[0].errors[0].field == "called" and "this one has 5" in results[0].errors[0].rule
    assert await redis_client.exists(Keys(settings.key_prefix).job("spring:8612345")) == 0  # nothing stored


async def test_gate_reads_the_stored_key_and_falls_back_to_called(
    redis_client: aioredis.Redis, settings: Settings
) -> None:
    """Do-not-call and per-number cap at claim and at the last gate: a job stored with `nk` is checked by it;
    a record without one (written before `nk` existed) by gate.lua's own number_key(called)."""
    cn = settings.model_copy(update={"default_region": "CN", "number_cap_calls": 1, "number_cap_days": 1.0})
    producer, ledger, keys = Producer(redis_client, cn), Ledger(redis_client, cn), Keys(cn.key_prefix)
    await producer.enqueue(_body("13800000001"), campaign="a")
    await redis_client.sadd(keys.suppress, "8613800000001")
    claim = await ledger.claim_run("a:8613800000001")
    assert claim.verdict == "final" and claim.record is not None and claim.record.state == State.SUPPRESSED
    # An old record: no nk, called written as digits; gate.lua keys it by its digits.
    await producer.enqueue(_body("+8613800000003"), campaign="a")
    await redis_client.sadd(keys.suppress, "8613800000003")
    assert (await ledger.begin_send("a:8613800000003")).reason == "suppressed"
    # The cap sees one person across forms and campaigns.
    await producer.enqueue(_body("13800000005"), campaign="a")
    await producer.enqueue(_body("008613800000005"), campaign="b")
    assert (await ledger.begin_send("a:8613800000005")).ok
    gate = await ledger.begin_send("b:8613800000005")
    assert (gate.ok, gate.reason) == (False, "cap")
    # The script's own fallback, for records without nk, is today's rule.
    src = scripts.source("ledger/gate.lua") + "\nreturn number_key(ARGV[1]) or false\n"
    assert await redis_client.eval(src, 0, "+86 138-0000-0001") == b"8613800000001"
