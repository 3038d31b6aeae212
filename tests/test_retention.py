"""
The retention policy (L{sensornet.store.retention}): what retention and
override text parses to and what each bad text is told, the canonical text
that parses back to the same retention, which rule a series gets (first
match wins) on a fleet of 200,000 series, and the disk estimate's
arithmetic and its one-line description.
"""

import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest

from sensornet.store import retention as retention_module
from sensornet.store.retention import (
    DEFAULT_RETENTION,
    MAX_OVERRIDES,
    DiskEstimate,
    Override,
    Retention,
    RetentionPolicy,
    describeEstimate,
    estimateDisk,
    parseOverride,
    parseRetention,
)

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
YEAR = 365 * DAY

VALID = "raw:30d,1m:1y,1h:10y"


def test_default_retention_is_30_days_1_year_10_years_in_seconds():
    """
    The default keeps raw readings 30 days, 1-minute rollups a year of 365
    days and 1-hour rollups ten such years, in seconds.
    """
    assert DEFAULT_RETENTION == Retention(30 * DAY, YEAR, 10 * YEAR)
    assert DEFAULT_RETENTION.describe() == VALID


@pytest.mark.parametrize(
    "text, expected",
    [
        (VALID, Retention(30 * DAY, YEAR, 10 * YEAR)),
        ("1h:10y,raw:30d,1m:1y", Retention(30 * DAY, YEAR, 10 * YEAR)),
        (" raw : 30d , 1m:1y ,1h: 10y ", Retention(30 * DAY, YEAR, 10 * YEAR)),
        ("raw:45s,1m:90m,1h:36h", Retention(45.0, 90 * MINUTE, 36 * HOUR)),
        ("raw:2w,1m:2w,1h:2w", Retention(14 * DAY, 14 * DAY, 14 * DAY)),
        ("raw:1d,1m:forever,1h:forever", Retention(DAY, None, None)),
        ("raw:forever,1m:forever,1h:forever", Retention(None, None, None)),
        ("raw:100y,1m:100y,1h:100y", Retention(100 * YEAR, 100 * YEAR, 100 * YEAR)),
        ("raw:007d,1m:1y,1h:10y", Retention(7 * DAY, YEAR, 10 * YEAR)),
        ("raw:1s,1m:1m,1h:1h", Retention(1.0, MINUTE, HOUR)),
    ],
)
def test_parse_retention_accepts_every_unit_any_order_and_forever(text, expected):
    """
    Each tier given once in any order, every unit (s, m minutes, h, d, w,
    y = 365 days), C{forever}, up to exactly 100 years, and ASCII spaces
    around items and colons, parse to seconds (L{None} for forever).
    """
    assert parseRetention(text) == expected


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "retention is empty"),
        ("   ", "retention is empty"),
        ("x" * 10_000, "retention is too long: 10000 characters, at most 512"),
        ("raw:30d\x00,1m:1y,1h:10y", "control character '\\x00' at position 7"),
        ("raw:30d,1m:1y,1h:10y\n", "control character '\\n'"),
        ("raw:\uff13\uff10d,1m:1y,1h:10y", "only ASCII characters: '\uff13' at position 4"),
        ("raw:\u0663\u0660d,1m:1y,1h:10y", "only ASCII characters: '\u0663'"),
        ("raw:30d,\u00a01m:1y,1h:10y", "only ASCII characters: '\\xa0'"),
        ("raw:30d,1m:1y", "lacks tier 1h"),
        ("1h:10y", "lacks tier raw, 1m"),
        ("raw:30d,1m:1y,1h:10y,raw:1d", "tier raw is given twice"),
        ("raw:30d,2m:1y,1h:10y", "unknown tier '2m'"),
        ("RAW:30d,1m:1y,1h:10y", "unknown tier 'RAW'"),
        ("raw:30d,,1m:1y,1h:10y", "empty item"),
        ("raw:30d,1m:1y,1h:10y,", "empty item"),
        ("raw30d,1m:1y,1h:10y", "'raw30d' is not TIER:DURATION"),
        ("raw:30d;1m:1y;1h:10y", "tier raw: '30d;1m:1y;1h:10y' is not a duration"),
        ("raw:0d,1m:1y,1h:10y", "tier raw: '0d' is zero"),
        ("raw:000s,1m:1y,1h:10y", "tier raw: '000s' is zero"),
        ("raw:-1d,1m:1y,1h:10y", "tier raw: '-1d' is not a duration"),
        ("raw:+1d,1m:1y,1h:10y", "tier raw: '+1d' is not a duration"),
        ("raw:1.5d,1m:1y,1h:10y", "tier raw: '1.5d' is not a duration"),
        ("raw:30,1m:1y,1h:10y", "tier raw: '30' is not a duration"),
        ("raw:d,1m:1y,1h:10y", "tier raw: 'd' is not a duration"),
        ("raw:,1m:1y,1h:10y", "tier raw: '' is not a duration"),
        ("raw:30 d,1m:1y,1h:10y", "tier raw: '30 d' is not a duration"),
        ("raw:1e3s,1m:1y,1h:10y", "tier raw: '1e3s' is not a duration"),
        ("raw:1M,1m:1y,1h:10y", "tier raw: unknown unit 'M'"),
        ("raw:30days,1m:1y,1h:10y", "tier raw: unknown unit 'days'"),
        ("raw:Forever,1m:1y,1h:10y", "tier raw: 'Forever' is not a duration"),
        ("raw:30d,1m:1y,1h:101y", "tier 1h: '101y' is more than 100 years"),
        ("raw:30d,1m:1y,1h:3153600001s", "tier 1h: '3153600001s' is more than 100 years"),
        ("raw:" + "9" * 400 + "d,1m:1y,1h:10y", "tier raw: '99999"),
        ("raw:" + "9" * 400 + "d,1m:1y,1h:10y", "is more than 100 years"),
        ("raw:1y,1m:30d,1h:10y", "tier 1m (30d) is kept shorter than tier raw (1y)"),
        ("raw:1y,1m:30d,1h:10y", "a coarser tier must be kept at least as long as a finer one"),
        ("raw:forever,1m:1y,1h:10y", "tier 1m (1y) is kept shorter than tier raw (forever)"),
        ("raw:30d,1m:1y,1h:30d", "tier 1h (30d) is kept shorter than tier 1m (1y)"),
        ("raw:10s,1m:30s,1h:10y", "tier 1m (30s) is kept less than one 1m bucket"),
        ("raw:10s,1m:30m,1h:59m", "tier 1h (59m) is kept less than one 1h bucket"),
    ],
)
def test_parse_retention_refuses_hostile_text_naming_the_problem(text, problem):
    """
    Every malformed or hostile retention (empty, huge, control characters,
    non-ASCII digits, unknown, repeated or missing tiers, zero, negative,
    fractional, unitless, over 100 years, tiers out of order) raises
    L{ValueError} whose message names the offending part.
    """
    with pytest.raises(ValueError) as raised:
        parseRetention(text)
    assert problem in str(raised.value)


def test_error_messages_quote_at_most_a_short_excerpt():
    """
    A huge bad item is quoted in the error as a short excerpt, so a
    hostile input cannot fill a log line.
    """
    with pytest.raises(ValueError) as raised:
        parseRetention("raw:" + "9" * 500 + "x")
    assert len(str(raised.value)) < 200


@pytest.mark.parametrize(
    "text, canonical",
    [
        (VALID, VALID),
        (" 1h:forever , 1m:52w, raw:14d", "raw:2w,1m:52w,1h:forever"),
        ("raw:86400s,1m:1440m,1h:24h", "raw:1d,1m:1d,1h:1d"),
        ("raw:90m,1m:7d,1h:730d", "raw:90m,1m:1w,1h:2y"),
        ("raw:3600s,1m:120m,1h:8760h", "raw:1h,1m:2h,1h:1y"),
        ("raw:61s,1m:61m,1h:25h", "raw:61s,1m:61m,1h:25h"),
        ("raw:52560000m,1m:100y,1h:forever", "raw:100y,1m:100y,1h:forever"),
        ("raw:forever,1m:forever,1h:forever", "raw:forever,1m:forever,1h:forever"),
    ],
)
def test_describe_is_canonical_and_parses_back_to_the_same_retention(text, canonical):
    """
    L{Retention.describe} writes the tiers in the order raw, 1m, 1h, each in
    the largest unit that divides it exactly, and parsing that text gives
    back an equal retention.
    """
    parsed = parseRetention(text)
    assert parsed.describe() == canonical
    assert parseRetention(canonical) == parsed


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "kind:temperature=raw:7d,1m:1y,1h:10y",
            Override("kind", "temperature", Retention(7 * DAY, YEAR, 10 * YEAR)),
        ),
        (
            "kind:co2_ppm-2=raw:7d,1m:1y,1h:10y",
            Override("kind", "co2_ppm-2", Retention(7 * DAY, YEAR, 10 * YEAR)),
        ),
        (
            "sensor:lab-*=raw:1y,1m:1y,1h:forever",
            Override("sensor", "lab-*", Retention(YEAR, YEAR, None)),
        ),
        (
            "sensor:a=b[0-9]?=raw:1d,1m:1d,1h:1d",
            Override("sensor", "a=b[0-9]?", Retention(DAY, DAY, DAY)),
        ),
        (
            "sensor:caf\u00e9-*=raw:1d,1m:1d,1h:1d",
            Override("sensor", "caf\u00e9-*", Retention(DAY, DAY, DAY)),
        ),
        (
            " sensor:x=raw:1d,1m:1d,1h:1d ",
            Override("sensor", "x", Retention(DAY, DAY, DAY)),
        ),
    ],
)
def test_parse_override_reads_kind_or_sensor_glob_and_a_retention(text, expected):
    """
    An override is C{kind:NAME=SPEC} or C{sensor:GLOB=SPEC}; it splits at
    the last C{=}, so a glob may hold C{=}; a glob may hold any printable
    character (sensor names are Unicode); its canonical text parses back.
    """
    override = parseOverride(text)
    assert override == expected
    assert parseOverride(override.describe()) == override


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "override is empty"),
        ("x" * 10_000, "override is too long: 10000 characters"),
        ("kind:temperature", "is not SELECTOR=SPEC"),
        ("kind:temperature=", "retention is empty"),
        ("=raw:1d,1m:1d,1h:1d", "selector '' is neither kind:NAME nor sensor:GLOB"),
        ("host:a=raw:1d,1m:1d,1h:1d", "selector 'host:a' is neither kind:NAME nor sensor:GLOB"),
        ("temperature=raw:1d,1m:1d,1h:1d", "selector 'temperature' is neither"),
        ("kind:=raw:1d,1m:1d,1h:1d", "override kind is empty"),
        ("kind:Temperature=raw:1d,1m:1d,1h:1d", "kind 'Temperature' may hold only lower-case"),
        ("kind:temp erature=raw:1d,1m:1d,1h:1d", "kind 'temp erature' may hold only"),
        ("kind:temp*=raw:1d,1m:1d,1h:1d", "kind 'temp*' may hold only"),
        ("kind:t\u00e9=raw:1d,1m:1d,1h:1d", "kind 't\u00e9' may hold only"),
        ("kind:" + "a" * 65 + "=raw:1d,1m:1d,1h:1d", "kind is too long: 65 characters, at most 64"),
        ("sensor:=raw:1d,1m:1d,1h:1d", "sensor glob is empty"),
        (
            "sensor:" + "a" * 129 + "=raw:1d,1m:1d,1h:1d",
            "glob is too long: 129 characters, at most 128",
        ),
        ("sensor:a\x00*=raw:1d,1m:1d,1h:1d", "control character '\\x00'"),
        ("sensor:a\x85*=raw:1d,1m:1d,1h:1d", "control character '\\x85'"),
        ("kind:humidity=raw:1y,1m:1d,1h:10y", "tier 1m (1d) is kept shorter than tier raw (1y)"),
        ("kind:humidity=raw:\uff11d,1m:1y,1h:10y", "only ASCII characters"),
        ("kind:humidity=raw:1d,1m:1y", "lacks tier 1h"),
    ],
)
def test_parse_override_refuses_hostile_text_naming_the_problem(text, problem):
    """
    Every malformed override raises L{ValueError} whose message names the
    offending part: the selector, the kind, the glob or the retention.
    """
    with pytest.raises(ValueError) as raised:
        parseOverride(text)
    assert problem in str(raised.value)


def policy(*overrides):
    """
    A policy with the default retention and C{overrides}, given as text.
    """
    return RetentionPolicy(overrides=[parseOverride(text) for text in overrides])


SHORT = "raw:1d,1m:1d,1h:1d"


def test_no_override_gives_the_default_rule():
    """
    With no overrides every series gets rule 0, the default.
    """
    assert RetentionPolicy().forSeries("lab-1", "temperature") == 0
    assert RetentionPolicy().rules == [DEFAULT_RETENTION]


def test_first_matching_override_wins_in_the_order_given():
    """
    When a kind override and a sensor glob both match a series, the one
    given first wins, whichever field it selects by; a series only the
    later one matches gets the later one.
    """
    globFirst = policy(f"sensor:lab-*={SHORT}", f"kind:temperature={SHORT}")
    assert globFirst.forSeries("lab-1", "temperature") == 1
    assert globFirst.forSeries("roof-1", "temperature") == 2
    assert globFirst.forSeries("lab-1", "humidity") == 1
    assert globFirst.forSeries("roof-1", "humidity") == 0

    kindFirst = policy(f"kind:temperature={SHORT}", f"sensor:lab-*={SHORT}")
    assert kindFirst.forSeries("lab-1", "temperature") == 1
    assert kindFirst.forSeries("lab-1", "humidity") == 2


def test_first_of_several_matching_globs_or_kinds_wins():
    """
    Of several matching globs, or two overrides of the same kind, the first
    given wins; a kind override after a matching glob loses to it.
    """
    subject = policy(
        f"sensor:*-1={SHORT}",
        f"sensor:lab-*={SHORT}",
        f"kind:humidity={SHORT}",
        f"sensor:*={SHORT}",
        f"kind:humidity={SHORT}",
    )
    assert subject.forSeries("lab-1", "humidity") == 1
    assert subject.forSeries("lab-2", "humidity") == 2
    assert subject.forSeries("roof-2", "humidity") == 3
    assert subject.forSeries("roof-2", "temperature") == 4


def test_kind_override_matches_the_exact_kind_only():
    """
    C{kind:temp} selects the kind C{temp} and neither C{temperature} nor
    C{Temp} (a kind holds no glob characters: L{parseOverride} refuses
    them).
    """
    subject = policy(f"kind:temp={SHORT}")
    assert subject.forSeries("a", "temp") == 1
    assert subject.forSeries("a", "temperature") == 0
    assert subject.forSeries("a", "Temp") == 0


@pytest.mark.parametrize(
    "glob, sensor, matches",
    [
        ("lab-*", "lab-1", True),
        ("lab-*", "lab-", True),
        ("lab-*", "lab", False),
        ("lab-*", "Lab-1", False),
        ("lab", "lab-1", False),
        ("lab", "a-lab", False),
        ("*", "site/a.b c", True),
        ("site/*", "site/a/b.c", True),
        ("*.temp", "a.b.temp", True),
        ("lab-?", "lab-1", True),
        ("lab-?", "lab-12", False),
        ("lab-[0-9]", "lab-7", True),
        ("lab-[0-9]", "lab-x", False),
        ("lab-[!0-9]", "lab-x", True),
        ("lab-[!0-9]", "lab-7", False),
        ("a[b", "a[b", True),
        ("a.b", "axb", False),
        ("a.b", "a.b", True),
        ("a+", "aa", False),
        ("a+", "a+", True),
        ("(a|b)", "a", False),
        ("x\\d", "x\\d", True),
        ("x\\d", "x1", False),
        ("caf\u00e9-*", "caf\u00e9-7", True),
        ("*-*-*-*", "a-b-c", False),
        ("*-*-*-*", "a-b-c-d", True),
    ],
)
def test_sensor_glob_matches_exactly_as_fnmatchcase(glob, sensor, matches):
    """
    A sensor glob matches a whole name, case-sensitively, as
    L{fnmatch.fnmatchcase} does: C{*} crosses dots and slashes, C{?} is one
    character, brackets are character sets (an unclosed one is literal),
    and regular-expression characters are literal.
    """
    assert fnmatch.fnmatchcase(sensor, glob) is matches
    subject = RetentionPolicy(overrides=[Override("sensor", glob, parseRetention(SHORT))])
    assert subject.forSeries(sensor, "temperature") == (1 if matches else 0)


def reference(overrides, sensor, kind):
    """
    The rule a series gets, computed the slow, obvious way: the first
    override that matches, by L{fnmatch.fnmatchcase} or equal kind.
    """
    for index, override in enumerate(overrides, start=1):
        if override.field == "kind":
            if override.pattern == kind:
                return index
        elif fnmatch.fnmatchcase(sensor, override.pattern):
            return index
    return 0


def test_rules_for_a_fleet_of_200000_series():
    """
    On 200,000 series (50,000 sensors times 4 kinds) each series gets the
    rule the obvious first-match loop gives, and the counts per rule are
    the hand-computed ones: every co2 series (50,000) by the kind override
    given first; the other lab series (75,000) by C{lab-*}; the other
    roof series 00000 to 09999 (30,000) by C{roof-0????}; the rest
    (45,000) by the default. The later overrides match nothing new.
    """
    subject = policy(
        f"kind:co2={SHORT}",
        f"sensor:lab-*={SHORT}",
        f"sensor:roof-0????={SHORT}",
        f"kind:co2={SHORT}",
        f"sensor:*-0000[0-9]={SHORT}",
    )
    kinds = ["temperature", "humidity", "pressure", "co2"]
    sensors = [f"{site}-{number:05d}" for site in ("lab", "roof") for number in range(25_000)]
    counts = [0] * len(subject.rules)
    for sensor in sensors:
        for kind in kinds:
            rule = subject.forSeries(sensor, kind)
            assert rule == reference(subject.overrides, sensor, kind)
            counts[rule] += 1
    assert counts == [45_000, 50_000, 75_000, 30_000, 0, 0]


def test_policy_accepts_100_overrides_and_refuses_101():
    """
    A policy holds at most L{MAX_OVERRIDES} (100) overrides; one more is a
    L{ValueError} saying how many.
    """
    overrides = [parseOverride(f"sensor:s{index}-*={SHORT}") for index in range(MAX_OVERRIDES + 1)]
    full = RetentionPolicy(overrides=overrides[:MAX_OVERRIDES])
    assert full.forSeries("s99-x", "temperature") == 100
    assert full.forSeries("s100-x", "temperature") == 0
    with pytest.raises(ValueError) as raised:
        RetentionPolicy(overrides=overrides)
    assert "101 retention overrides, at most 100" in str(raised.value)


def test_policy_refuses_a_retention_with_tiers_out_of_order():
    """
    A L{Retention} built by hand rather than parsed is checked too: the
    policy refuses one whose coarser tier is kept shorter.
    """
    with pytest.raises(ValueError) as raised:
        RetentionPolicy(default=Retention(YEAR, DAY, 10 * YEAR))
    assert "tier 1m (1d) is kept shorter than tier raw (1y)" in str(raised.value)


def test_rules_and_describe_list_the_default_then_each_override():
    """
    L{RetentionPolicy.rules} and L{RetentionPolicy.describe} number the
    rules as L{RetentionPolicy.forSeries} answers: the default first.
    """
    subject = policy("kind:humidity=raw:7d,1m:1y,1h:10y", "sensor:lab-*=raw:1y,1m:1y,1h:forever")
    assert subject.rules == [
        DEFAULT_RETENTION,
        Retention(7 * DAY, YEAR, 10 * YEAR),
        Retention(YEAR, YEAR, None),
    ]
    assert subject.describe() == (
        "0 default raw:30d,1m:1y,1h:10y\n"
        "1 kind:humidity=raw:1w,1m:1y,1h:10y\n"
        "2 sensor:lab-*=raw:1y,1m:1y,1h:forever"
    )


def test_estimate_for_20000_series_every_2_seconds():
    """
    Under the default (30 days, 1 year, 10 years), 20,000 series every 2 s:
    raw 20,000 * 1,296,000 readings * 12 B; 1m 20,000 * 525,600 rows *
    48 B; 1h 20,000 * 87,600 rows * 48 B.
    """
    estimate = estimateDisk(RetentionPolicy(), 20_000, 2.0)
    assert estimate == DiskEstimate(
        311_040_000_000.0, 504_576_000_000.0, 84_096_000_000.0, 899_712_000_000.0
    )
    assert describeEstimate(estimate, 20_000, 2.0) == (
        "expected disk at 20,000 series every 2 s: "
        "raw 311.0 GB + 1m 504.6 GB + 1h 84.1 GB = 899.7 GB"
    )


def test_estimate_when_the_interval_is_longer_than_a_bucket():
    """
    A series reporting every 5 minutes writes one 1-minute row per reading,
    not one per minute: 1,000 series keep 31,536,000 / 300 = 105,120
    1-minute rows each; hours are unaffected. Reporting every 2 hours, a
    series keeps 315,360,000 / 7,200 = 43,800 hour rows.
    """
    fiveMinutes = estimateDisk(RetentionPolicy(), 1_000, 300.0)
    assert fiveMinutes == DiskEstimate(
        1_000 * 8_640 * 12.0,
        1_000 * 105_120 * 48.0,
        1_000 * 87_600 * 48.0,
        103_680_000.0 + 5_045_760_000.0 + 4_204_800_000.0,
    )
    twoHours = estimateDisk(RetentionPolicy(), 1, 7_200.0, rawBytes=10.0, rollupBytes=100.0)
    assert twoHours == DiskEstimate(
        360 * 10.0, 4_380 * 100.0, 43_800 * 100.0, 3_600.0 + 438_000.0 + 4_380_000.0
    )
    assert describeEstimate(twoHours, 1, 7_200.0) == (
        "expected disk at 1 series every 7200 s: raw 3.6 KB + 1m 438.0 KB + 1h 4.4 MB = 4.8 MB"
    )


def test_estimate_uses_the_default_rule_only():
    """
    Overrides do not change the estimate: it is for series under the
    policy's default rule.
    """
    default = RetentionPolicy(default=parseRetention("raw:1d,1m:1d,1h:1d"))
    withOverride = RetentionPolicy(
        default=parseRetention("raw:1d,1m:1d,1h:1d"),
        overrides=[parseOverride("sensor:*=raw:100y,1m:100y,1h:100y")],
    )
    assert estimateDisk(default, 10, 1.0) == estimateDisk(withOverride, 10, 1.0)
    assert estimateDisk(default, 10, 1.0) == DiskEstimate(
        10 * 86_400 * 12.0, 10 * 1_440 * 48.0, 10 * 24 * 48.0, 10_368_000.0 + 691_200.0 + 11_520.0
    )


def test_estimate_of_a_tier_kept_forever_is_unbounded():
    """
    A tier kept forever has no steady state: its estimate and the total are
    L{None}, and the description says unbounded and why.
    """
    subject = RetentionPolicy(default=parseRetention("raw:30d,1m:1y,1h:forever"))
    estimate = estimateDisk(subject, 20_000, 2.0)
    assert estimate == DiskEstimate(311_040_000_000.0, 504_576_000_000.0, None, None)
    assert describeEstimate(estimate, 20_000, 2.0) == (
        "expected disk at 20,000 series every 2 s: raw 311.0 GB + 1m 504.6 GB + 1h unbounded"
        " = unbounded (a tier is kept forever)"
    )


@pytest.mark.parametrize(
    "size, text",
    [
        (0.0, "0 B"),
        (999.0, "999 B"),
        (999.6, "1.0 KB"),
        (1_500.0, "1.5 KB"),
        (999_949.0, "999.9 KB"),
        (999_960.0, "1.0 MB"),
        (2_345_678_901.0, "2.3 GB"),
        (12_345_678_901_234.0, "12.3 TB"),
        (5e16, "50000.0 TB"),
    ],
)
def test_describe_estimate_uses_decimal_units_with_one_decimal(size, text):
    """
    Sizes read in decimal units (1 KB = 1000 B) with one decimal, in the
    unit that keeps the number under 1000 after rounding, whole bytes below
    a kilobyte and terabytes at most.
    """
    estimate = DiskEstimate(size, size, size, size)
    assert describeEstimate(estimate, 1, 0.5) == (
        f"expected disk at 1 series every 0.5 s: raw {text} + 1m {text} + 1h {text} = {text}"
    )


@pytest.mark.parametrize(
    "series, interval, rawBytes, rollupBytes, problem",
    [
        (-1, 2.0, 12.0, 48.0, "series must be >= 0"),
        (1, 0.0, 12.0, 48.0, "interval must be a finite number > 0, not 0.0"),
        (1, -2.0, 12.0, 48.0, "interval must be a finite number > 0"),
        (1, float("nan"), 12.0, 48.0, "interval must be a finite number > 0, not nan"),
        (1, float("inf"), 12.0, 48.0, "interval must be a finite number > 0, not inf"),
        (1, 2.0, -1.0, 48.0, "rawBytes must be a finite number >= 0"),
        (1, 2.0, 12.0, float("nan"), "rollupBytes must be a finite number >= 0"),
    ],
)
def test_estimate_refuses_impossible_fleets(series, interval, rawBytes, rollupBytes, problem):
    """
    A negative fleet, an interval that is not a positive finite number, or
    a negative or non-finite row size is a L{ValueError} naming it.
    """
    with pytest.raises(ValueError) as raised:
        estimateDisk(RetentionPolicy(), series, interval, rawBytes, rollupBytes)
    assert problem in str(raised.value)


def test_module_imports_neither_twisted_nor_the_store():
    """
    The module is pure: loaded on its own, it imports no Twisted and no
    database module.
    """
    path = Path(retention_module.__file__)
    program = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('retention', {str(path)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "bad = sorted(name for name in sys.modules\n"
        "             if name.split('.')[0] in ('twisted', 'sqlite3', 'psycopg', 'sensornet'))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
