"""Phone numbers as people: E.164 normalisation and the callee's time zone, with the phonenumbers library.

::

    normalise("008613800000001", "CN")       # '+8613800000001' (E.164; ValueError naming the rule)
    number_key("13800000001", "CN")          # '8613800000001'  the do-not-call / cap / job-id key
    number_key("8899", "CN")                 # '8899'           not a possible CN number: its digits, as before
    zones("+12125550100")                    # ('America/New_York',)
    zone_for("+18005550100", "UTC")          # 'UTC': +1 800 maps to many zones, so the default

The key of a number (:func:`number_key`) is its E.164 form without the '+' when the number can be
normalised, so ``+8613800000001``, ``008613800000001`` and ``13800000001`` (default region CN) are one
person for the do-not-call list, the per-number cap and a campaign's job ids. A number written without
'+' or an international prefix that is not a possible number of the default region (a short code, an
extension such as the seed's ``8899``), or any such number when no default region is set, keeps today's
key: its digits (:func:`worker.rules.normalize_number`). A number written internationally ('+', or the
default region's international prefix such as ``00``) that is not a possible number of its country is
refused as a campaign number (ValueError naming the rule): the provider could not connect it either; the
do-not-call list takes it as its digits (``strict=False``).

"Possible" is phonenumbers' length check (``is_possible_number_with_reason`` == IS_POSSIBLE), not its
validity check: validity follows number-range metadata that lags behind new ranges, and a call refused
for stale metadata is worse than one the network rejects.

Cost: the launcher calls these per row (budget ~2 us). ``phonenumbers.parse`` costs ~15 us, so the common
shapes take a fast path that repeats, with the library's own metadata and regular expressions, exactly
what ``parse`` does for them (tests/test_numbers.py compares the two on many numbers): digits after '+'
or the region's international prefix, or a national number that needs no national-prefix stripping. The
rest goes to phonenumbers (LRU-cached). Time zones: a table per calling code for the many countries whose
zones do not depend on the number, phonenumbers (cached) for the others (:func:`zones`).

phonenumbers is imported on first use (~25 ms), so importing this module stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from worker.rules import strip_number_formatting, valid_timezone

if TYPE_CHECKING:
    from re import Pattern

__all__ = [
    "FORMAT_RULE",
    "REGION_RULE",
    "key_and_e164",
    "normalise",
    "number_key",
    "valid_region",
    "zone_for",
    "zones",
]

FORMAT_RULE = "must be 1-32 digits, with an optional leading '+' (spaces, '-', '.', '(', ')' ignored)"
"""Today's rule for a written number (:func:`worker.rules.normalize_number` says the same)."""
REGION_RULE = "must be an ISO 3166 alpha-2 region code phonenumbers knows, such as CN, US or GB"
_DIGITS = re.compile(r"[0-9]{1,32}")
_MIN_NSN, _MAX_NSN = 2, 17  # phonenumbers' bounds on a national significant number
_SLOW_CACHE = 1 << 16


def valid_region(region: object) -> bool:
    """True for a region code phonenumbers has metadata for (upper case: ``CN``, ``US``, ``GB``)."""
    if not isinstance(region, str):
        return False
    import phonenumbers

    return region in phonenumbers.SUPPORTED_REGIONS


# --- Per country code / region facts, from phonenumbers' metadata, built on first use -----------------


@dataclass(frozen=True, slots=True)
class _Country:
    """What ``parse`` + ``is_possible_number`` look at for a number with this calling code (its main
    region's metadata, as phonenumbers uses for a number given with its country code)."""

    cc: str
    npfp: Pattern[str] | None  # national_prefix_for_parsing: a match means parse may strip a prefix
    full: frozenset[int]  # national number lengths that are IS_POSSIBLE (local-only lengths excluded)
    region: str  # the main region, for messages
    lengths: tuple[int, ...]
    meta: Any  # its PhoneMetadata


@dataclass(frozen=True, slots=True)
class _Region:
    """What ``parse`` looks at for a number written without '+' in this default region."""

    cc: str
    idd: Pattern[str] | None  # international_prefix ("00" for CN)
    npfp: Pattern[str] | None  # the region's own national prefix for parsing
    full: frozenset[int]  # IS_POSSIBLE lengths of the calling code's main region (what is_possible uses)
    meta: Any  # the region's PhoneMetadata
    country: _Country


_COUNTRIES: dict[str, _Country | None] = {}
_REGIONS: dict[str, _Region] = {}


def _compile(pattern: str | None) -> Pattern[str] | None:
    return re.compile(pattern) if pattern else None


def _country(cc: str) -> _Country | None:
    """The facts of calling code ``cc`` (digits), None when no country has it."""
    try:
        return _COUNTRIES[cc]
    except KeyError:
        pass
    import phonenumbers

    found: _Country | None = None
    code = int(cc)
    if cc[0] != "0" and code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
        region = phonenumbers.region_code_for_country_code(code)
        meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if meta is not None:
            general = meta.general_desc
            possible = tuple(general.possible_length or ()) if general is not None else ()
            local = set(general.possible_length_local_only or ()) if general is not None else set()
            found = _Country(cc, _compile(meta.national_prefix_for_parsing),
                             frozenset(n for n in possible if n not in local), region, possible, meta)
    _COUNTRIES[cc] = found
    return found


def _calling_code(digits: str) -> _Country | None:
    """The country of an international number's digits (calling codes are prefix-free, 1-3 digits)."""
    for n in (1, 2, 3):
        if len(digits) > n:
            country = _country(digits[:n])
            if country is not None:
                return country
    return None


def _region(region: str) -> _Region:
    try:
        return _REGIONS[region]
    except KeyError:
        pass
    import phonenumbers

    if not valid_region(region):
        raise ValueError(f"region {region!r} {REGION_RULE}")
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    assert meta is not None  # a supported region has metadata
    country = _country(str(meta.country_code))
    assert country is not None  # a region's own calling code is known
    info = _Region(str(meta.country_code), _compile(meta.international_prefix),
                   _compile(meta.national_prefix_for_parsing), country.full, meta, country)
    _REGIONS[region] = info
    return info


# --- Normalisation -----------------------------------------------------------------------------------


def _clean(raw: object) -> tuple[bool, str]:
    """(written with '+', its digits) under today's rule (:data:`FORMAT_RULE`); ValueError otherwise."""
    if isinstance(raw, str):
        if raw.isascii() and raw.isdigit() and len(raw) <= 32:
            return False, raw
        if raw[:1] == "+":
            digits = raw[1:]
            if digits.isascii() and digits.isdigit() and len(digits) <= 32:
                return True, digits
        text = strip_number_formatting(raw)
        plus = text[:1] == "+"
        digits = text[1:] if plus else text
        if _DIGITS.fullmatch(digits):
            return plus, digits
    raise ValueError(FORMAT_RULE)


def _international_fast(digits: str) -> str | None:
    """E.164 of ``+<digits>`` when it is the plain case ``parse`` changes nothing in (no national prefix to
    strip, no leading zero) and a possible length; None: ask phonenumbers."""
    country = _calling_code(digits)
    if country is None:
        return None
    nsn = digits[len(country.cc):]
    n = len(nsn)
    if n < _MIN_NSN or n > _MAX_NSN or nsn[0] == "0" or n not in country.full:
        return None
    if country.npfp is not None and country.npfp.match(nsn):
        return None
    return "+" + digits


def _idd_rest(info: _Region, digits: str) -> str | None:
    """The digits after the region's international prefix, as ``parse`` strips it (not when a 0 follows)."""
    if info.idd is None:
        return None
    m = info.idd.match(digits)
    if m is None:
        return None
    rest = digits[m.end():]
    return None if rest[:1] == "0" else rest


def _e164(plus: bool, digits: str, region: str | None) -> str | None:
    """E.164 of a cleaned number; None for a national number that cannot be normalised (no region, or not
    a possible number of it); ValueError for an international one that is not possible."""
    if plus:
        return _international_fast(digits) or _international(digits, "+" + digits, None)
    if region is None:
        return None
    info = _region(region)
    rest = _idd_rest(info, digits)
    if rest is not None:
        return _international_fast(rest) or _international(rest, digits, region)
    n = len(digits)
    if (digits.startswith(info.cc) or n < _MIN_NSN or n > _MAX_NSN or digits[0] == "0" or n not in info.full
            or (info.npfp is not None and info.npfp.match(digits))):
        return _national(digits, info, region)
    return "+" + info.cc + digits


# --- The medium path: what parse does for a string of digits, step by step, with the library's own
# functions (a few regular expressions instead of parse's ~15 us). Held to parse by tests/test_numbers.py;
# should a later phonenumbers rename these internals, the slow path (parse itself) takes over.

_P: Any = None


def _internals() -> Any:
    global _P
    if _P is None:
        try:
            from phonenumbers import phonenumberutil as u

            _P = (u._maybe_strip_national_prefix_carrier_code, u._match_national_number, u._test_number_length,
                  u.ValidationResult)
            _P[3].IS_POSSIBLE  # noqa: B018 - fail here, not per number, if the names moved
        except (ImportError, AttributeError):
            _P = False
    return _P


def _tail(cc: str, nn: str, meta: Any, country: _Country) -> str | None:
    """parse from its national-prefix stripping on, then is_possible: the E.164 or None."""
    strip, _match, test_length, vr = _P
    if len(nn) < _MIN_NSN:
        return None
    _, stripped, _ = strip(nn, meta)
    if test_length(stripped, meta) not in (vr.TOO_SHORT, vr.IS_POSSIBLE_LOCAL_ONLY, vr.INVALID_LENGTH):
        nn = stripped
    if len(nn) > _MAX_NSN:
        return None
    # The national significant number E.164 shows is nn itself (Italian leading zeros included).
    return "+" + cc + nn if test_length(nn, country.meta) == vr.IS_POSSIBLE else None


def _international(digits: str, text: str, region: str | None) -> str:
    """A number given with its calling code ('+' or the region's international prefix): E.164, or
    ValueError naming the rule."""
    if not _internals():
        result = _slow(text, region, True)
        assert result is not None  # international: refused by raising
        return result
    country = _calling_code(digits) if len(digits) > 2 else None
    if country is None:
        raise ValueError(_NO_CC)
    nn = digits[len(country.cc):]
    e164 = _tail(country.cc, nn, country.meta, country)
    if e164 is None:
        raise ValueError(_length_rule(country, len(_strip_nsn(nn, country))))
    return e164


def _strip_nsn(nn: str, country: _Country) -> str:
    """The national number after parse's prefix stripping (for the message)."""
    strip, _match, test_length, vr = _P
    _, stripped, _ = strip(nn, country.meta)
    bad = (vr.TOO_SHORT, vr.IS_POSSIBLE_LOCAL_ONLY, vr.INVALID_LENGTH)
    return stripped if test_length(stripped, country.meta) not in bad else nn


def _national(digits: str, info: _Region, region: str) -> str | None:
    """A number without its calling code, in ``region``: E.164, or None."""
    if not _internals():
        return _slow(digits, region, False)
    strip, match, test_length, vr = _P
    if len(digits) < _MIN_NSN:
        return None
    meta = info.meta
    if digits.startswith(info.cc):
        # parse: a number that starts with the region's calling code is read as carrying it when only
        # that reading matches the region's numbers, or the whole is too long.
        _, rest, _ = strip(digits[len(info.cc):], meta)
        general = meta.general_desc
        if (not match(digits, general, False) and match(rest, general, False)) or \
                test_length(digits, meta) == vr.TOO_LONG:
            return _tail(info.cc, rest, info.country.meta, info.country)
    return _tail(info.cc, digits, meta, info.country)


_NO_CC = ("must be a possible phone number: no country calling code follows its '+' or international prefix "
          "(E.164 is +<country code><number>)")


def _length_rule(country: _Country, n: int) -> str:
    lengths = ", ".join(str(k) for k in sorted(country.full)) or "none"
    return (f"must be a possible phone number: +{country.cc} ({country.region}) numbers have {lengths} digits "
            f"after the country code, this one has {n}")


@lru_cache(maxsize=_SLOW_CACHE)
def _slow(text: str, region: str | None, international: bool) -> str | None:
    """phonenumbers itself: E.164 when possible; else ValueError for an international number, None for a
    national one."""
    import phonenumbers
    from phonenumbers import NumberParseException, ValidationResult

    try:
        num = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        if not international:
            return None
        if exc.error_type in (NumberParseException.INVALID_COUNTRY_CODE, NumberParseException.TOO_SHORT_AFTER_IDD):
            raise ValueError(_NO_CC) from None
        raise ValueError(f"must be a possible phone number ({exc._msg})") from None
    if phonenumbers.is_possible_number_with_reason(num) == ValidationResult.IS_POSSIBLE:
        return str(phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164))
    if not international:
        return None
    country = _country(str(num.country_code))
    nsn = phonenumbers.national_significant_number(num)
    if country is None:  # pragma: no cover - parse only gives known calling codes
        raise ValueError("must be a possible phone number: unknown country calling code")
    raise ValueError(_length_rule(country, len(nsn)))


def normalise(raw: str, region: str | None = None) -> str:
    """The E.164 form (``+8613800000001``) of a written number; ``region`` (ISO 3166 alpha-2, e.g. ``CN``)
    is the country of numbers written without '+' or an international prefix. Raises ValueError naming
    the rule when the number cannot be normalised."""
    plus, digits = _clean(raw)
    e164 = _e164(plus, digits, region)
    if e164 is None:
        if region is None:
            raise ValueError("must start with '+' and a country calling code (no default region is set for "
                             "national numbers: DIALER_DEFAULT_REGION)")
        raise ValueError(f"must be a possible phone number of region {region} or start with '+' and a "
                         "country calling code")
    return e164


def key_and_e164(raw: str, region: str | None = None) -> tuple[str, str | None]:
    """(:func:`number_key`, the E.164 form or None when the key is the plain digits of a national number)."""
    plus, digits = _clean(raw)
    e164 = _e164(plus, digits, region)
    return (digits, None) if e164 is None else (e164[1:], e164)


def number_key(raw: str, region: str | None = None, *, strict: bool = True) -> str:
    """The do-not-call, per-number-cap and campaign job-id key of a number: its E.164 digits without the
    '+' (``8613800000001``), or the plain digits of a national number that cannot be normalised (see the
    module doc). Raises ValueError naming the rule (:data:`FORMAT_RULE`, or, with ``strict``, an
    international number that is not a possible one). ``strict=False`` is for the do-not-call list: an
    entry is never refused for what only a call would need (a spurious entry is only a call not made), so
    such a number is listed as its digits, as before."""
    plus, digits = _clean(raw)
    try:
        e164 = _e164(plus, digits, region)
    except ValueError:
        if strict:
            raise
        return digits
    return digits if e164 is None else e164[1:]


# --- Time zones --------------------------------------------------------------------------------------

_TZ_DEPTH: dict[str, int] = {}  # calling code -> longest time-zone prefix that starts with it
_TZ_UNIFORM: dict[str, tuple[str, ...]] = {}  # calling code -> its zones, when every prefix of it has those
_TZ_DATA: dict[str, Any] | None = None
_ZONES_CACHE = 1 << 16


def _known(found: Any) -> tuple[str, ...]:
    return tuple(str(z) for z in found if z != "Etc/Unknown")


def _tz_data() -> dict[str, Any]:
    global _TZ_DATA
    if _TZ_DATA is None:
        from phonenumbers.tzdata import TIMEZONE_DATA

        per_cc: dict[str, set[tuple[str, ...]]] = {}
        for prefix, found in TIMEZONE_DATA.items():
            for n in (1, 2, 3):
                cc = prefix[:n]
                if len(prefix) >= n and _country(cc) is not None:
                    per_cc.setdefault(cc, set()).add(_known(found))
                    break
        for cc, answers in per_cc.items():
            if len(answers) == 1 and _known(TIMEZONE_DATA.get(cc, ())) in answers:
                _TZ_UNIFORM[cc] = next(iter(answers))
        _TZ_DATA = TIMEZONE_DATA
    return _TZ_DATA


def zones(e164: str) -> tuple[str, ...]:
    """The IANA zones phonenumbers gives the number (its ``time_zones_for_number``): one for most
    numbers; several for a number whose zone its data cannot tell (``+1 800`` toll-free, Russia's mobiles,
    which are not geographical); none when the data has no entry or the number is not valid.

    Fast: a calling code whose every prefix has the same zones (China, India, the UK, Germany, Japan ...:
    most countries) answers from a table, without the number's type or validity. One exception to the
    library follows from that: an invalid but possible number of such a country gets the country's zones
    (phonenumbers: none), as this module checks possibility, not validity. Other calling codes (the NANP,
    Russia, Brazil, Mexico, Australia ...) ask phonenumbers, a few us per number, LRU-cached.

    ``e164`` is :func:`normalise`'s result (a '+' then digits; a key without the '+' is taken too)."""
    digits = e164[1:] if e164[:1] == "+" else e164
    _tz_data()
    country = _calling_code(digits)
    if country is None:
        return ()
    uniform = _TZ_UNIFORM.get(country.cc)
    if uniform is not None:
        return uniform
    return _library_zones(country.cc, digits[len(country.cc):])


@lru_cache(maxsize=_ZONES_CACHE)
def _library_zones(cc: str, nsn: str) -> tuple[str, ...]:
    from phonenumbers import PhoneNumber
    from phonenumbers.timezone import time_zones_for_number

    num = PhoneNumber(country_code=int(cc), national_number=int(nsn or "0"))
    if len(nsn) > 1 and nsn[0] == "0":  # E.164 keeps an Italian-style leading zero: so does the number
        num.italian_leading_zero = True
        zeros = len(nsn) - len(nsn.lstrip("0"))
        if zeros > 1:
            num.number_of_leading_zeros = min(zeros, len(nsn) - 1)
    return _known(time_zones_for_number(num))


_ZONE_OK: dict[str, bool] = {}


def zone_for(e164: str, default: str | None = None) -> str | None:
    """The number's IANA zone when it has exactly one this host knows, else ``default``."""
    found = zones(e164)
    if len(found) == 1:
        zone = found[0]
        ok = _ZONE_OK.get(zone)
        if ok is None:
            ok = _ZONE_OK[zone] = valid_timezone(zone)
        if ok:
            return zone
    return default
