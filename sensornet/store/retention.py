"""
How long the store keeps each series' data: a retention policy, in the
spirit of Graphite carbon's C{retentions}.

The store keeps three I{tiers} of every series (one sensor name and one
kind, such as C{"temperature"}):

  - C{raw}: every reading as it arrived;
  - C{1m}: one rollup row per series per minute (count, min, max, sum, ...);
  - C{1h}: one rollup row per series per hour.

A policy gives each tier a retention: how long its data is kept. A
coarser tier is never kept shorter than a finer one (C{raw <= 1m <= 1h}),
so a query over an old window can always fall back to a coarser tier.
Expiry itself is not done here: the store's compactor removes data older
than each tier's retention, in small steps beside its other work. This
module only parses, describes and matches policies, and estimates the disk
they cost; everything in it is a pure function of its arguments.

The text grammar (the same everywhere a retention is written)::

    retention := tier ":" duration ("," tier ":" duration)*
    tier      := "raw" | "1m" | "1h"      (each exactly once, any order)
    duration  := digits unit | "forever"
    unit      := "s" | "m" | "h" | "d" | "w" | "y"
                 (seconds, minutes, hours, days, weeks, 365-day years)

for example C{raw:30d,1m:1y,1h:10y} (L{DEFAULT_RETENTION}). Digits are
ASCII C{0}-C{9}; a duration is positive and at most 100 years
(L{MAX_DURATION}); ASCII spaces around an item or a colon are ignored.

An override gives one group of series a retention of its own
(L{parseOverride}): C{kind:NAME=SPEC} for every series of one kind, or
C{sensor:GLOB=SPEC} for every series whose sensor name matches a glob. Like
carbon's storage schemas, the I{first} matching override wins, in the
order given; a series no override matches gets the default.
"""

from __future__ import annotations

import fnmatch
import math
import re
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

__all__ = [
    "Retention",
    "Override",
    "RetentionPolicy",
    "DiskEstimate",
    "DEFAULT_RETENTION",
    "TIERS",
    "MAX_DURATION",
    "MAX_OVERRIDES",
    "MAX_GLOB",
    "MAX_TEXT",
    "parseRetention",
    "parseOverride",
    "estimateDisk",
    "describeEstimate",
]

#: The tier names, finest first, in the order of L{Retention}'s fields.
TIERS: Tuple[str, str, str] = ("raw", "1m", "1h")

#: The bucket of each tier, in seconds (a raw reading is its own bucket).
_BUCKETS: Tuple[float, float, float] = (0.0, 60.0, 3600.0)

_UNITS: Dict[str, int] = {
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 7 * 86400,
    "y": 365 * 86400,
}

#: Largest unit first: the order L{Retention.describe} tries them in.
_UNITS_DESCENDING = sorted(_UNITS.items(), key=lambda item: -item[1])

#: The longest finite retention, in seconds: 100 years of 365 days.
MAX_DURATION = 100 * _UNITS["y"]

#: The most overrides a policy may hold.
MAX_OVERRIDES = 100

#: The longest sensor glob, in characters (the longest sensor name is 128).
MAX_GLOB = 128

#: The longest retention or override text, in characters.
MAX_TEXT = 512

_FOREVER = "forever"
_MAX_KIND = 64
_DURATION = re.compile(r"([0-9]+)([a-zA-Z]+)")
_KIND = re.compile(r"[a-z0-9_-]+")
# Control characters: C0, DEL and C1.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_EXAMPLE = "raw:30d,1m:1y,1h:10y"


def _quote(text: str, limit: int = 40) -> str:
    """
    C{text} quoted for an error message: C{repr}, so control characters show
    as escapes, and cut to about C{limit} characters.
    """
    if len(text) > limit:
        return repr(text[:limit]) + "..."
    return repr(text)


def _describeDuration(seconds: Optional[float]) -> str:
    """
    A retention in the grammar's words: C{forever} for L{None}, otherwise
    the whole number of the largest unit that divides C{seconds} exactly
    (C{2592000.0} is C{30d}, C{1209600.0} is C{2w}).
    """
    if seconds is None:
        return _FOREVER
    if seconds != int(seconds):
        # Not a value parseRetention returns; still say what it is.
        return f"{seconds:g}s"
    whole = int(seconds)
    for unit, size in _UNITS_DESCENDING:
        if whole % size == 0 and whole != 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


class Retention(NamedTuple):
    """
    How long each tier of a series is kept.

    @ivar raw: Seconds raw readings are kept, or L{None} for ever.
    @ivar minute: Seconds 1-minute rollups are kept, or L{None} for ever.
    @ivar hour: Seconds 1-hour rollups are kept, or L{None} for ever.
    """

    raw: Optional[float]
    minute: Optional[float]
    hour: Optional[float]

    def describe(self) -> str:
        """
        The canonical text of this retention, such as
        C{raw:30d,1m:1y,1h:10y}: the tiers in the order raw, 1m, 1h, each
        duration in the largest unit that divides it exactly, C{forever}
        for L{None}. L{parseRetention} of the result gives back an equal
        L{Retention}.
        """
        return ",".join(
            f"{tier}:{_describeDuration(seconds)}" for tier, seconds in zip(TIERS, self)
        )


def _parseDuration(tier: str, text: str) -> Optional[float]:
    """
    One duration of the grammar: seconds, or L{None} for C{forever}.

    @param tier: The tier the duration is for, to name it in errors.
    @raise ValueError: C{text} is not a positive duration of at most
        L{MAX_DURATION}.
    """
    if text == _FOREVER:
        return None
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"tier {tier}: {_quote(text)} is not a duration: expected a positive whole "
            f"number and a unit (s, m, h, d, w, y), such as 30d, or 'forever'"
        )
    digits, unit = match.groups()
    size = _UNITS.get(unit)
    if size is None:
        raise ValueError(
            f"tier {tier}: unknown unit {_quote(unit)} in {_quote(text)}: the units are "
            f"s, m (minutes), h, d, w and y (365 days), in lower case"
        )
    # Refuse absurd digit strings before turning them into an integer.
    if len(digits.lstrip("0")) > len(str(MAX_DURATION)):
        seconds = MAX_DURATION + 1
    else:
        seconds = int(digits) * size
    if seconds == 0:
        raise ValueError(f"tier {tier}: {_quote(text)} is zero: a retention must be positive")
    if seconds > MAX_DURATION:
        raise ValueError(
            f"tier {tier}: {_quote(text)} is more than 100 years; "
            f"write 'forever' to keep this tier for good"
        )
    return float(seconds)


def _checkText(text: str, what: str) -> str:
    """
    The common checks on retention and override text: a string, not empty,
    at most L{MAX_TEXT} characters, no control characters.

    @param what: How errors name the text (C{"retention"}, C{"override"}).
    @return: C{text} without surrounding ASCII spaces.
    @raise ValueError: Naming the first problem found.
    """
    if not isinstance(text, str):
        raise ValueError(f"{what} must be text, not {type(text).__name__}")
    if len(text) > MAX_TEXT:
        raise ValueError(f"{what} is too long: {len(text)} characters, at most {MAX_TEXT}")
    control = _CONTROL.search(text)
    if control is not None:
        raise ValueError(
            f"{what} holds a control character {control.group()!r} "
            f"at position {control.start()}: {_quote(text)}"
        )
    stripped = text.strip(" ")
    if not stripped:
        raise ValueError(f"{what} is empty: expected something like {_EXAMPLE}")
    return stripped


def parseRetention(text: str) -> Retention:
    """
    Parse a retention such as C{raw:30d,1m:1y,1h:10y}.

    The grammar is in this module's docstring: each of the tiers C{raw},
    C{1m} and C{1h} given exactly once, in any order, as C{TIER:DURATION};
    a duration is a positive whole number of ASCII digits and a unit
    (C{s}, C{m} minutes, C{h}, C{d}, C{w}, C{y} = 365 days), at most 100
    years, or C{forever}. A coarser tier is never kept shorter than a
    finer one (C{raw <= 1m <= 1h}), and a rollup tier is kept at least one
    bucket (C{1m} at least a minute, C{1h} at least an hour), or it would
    expire each row as soon as it is complete.

    @return: The retention in seconds, L{None} for C{forever}.
    @raise ValueError: A message for the user naming what is wrong:
        empty, too long, control or non-ASCII characters, an unknown,
        repeated or missing tier, a bad duration, or tiers out of order.
    """
    stripped = _checkText(text, "retention")
    if not stripped.isascii():
        where, character = next(
            (index, char) for index, char in enumerate(stripped) if not char.isascii()
        )
        raise ValueError(
            f"retention may hold only ASCII characters: {character!r} at position {where} "
            f"of {_quote(stripped)} is not"
        )
    found: Dict[str, Optional[float]] = {}
    for item in stripped.split(","):
        item = item.strip(" ")
        if not item:
            raise ValueError(
                f"retention has an empty item (two commas in a row, or a comma at an end): "
                f"{_quote(stripped)}"
            )
        tier, colon, duration = item.partition(":")
        tier = tier.strip(" ")
        duration = duration.strip(" ")
        if not colon:
            raise ValueError(f"{_quote(item)} is not TIER:DURATION, such as raw:30d")
        if tier not in TIERS:
            raise ValueError(f"unknown tier {_quote(tier)}: the tiers are raw, 1m and 1h")
        if tier in found:
            raise ValueError(f"tier {tier} is given twice; give each of raw, 1m, 1h once")
        found[tier] = _parseDuration(tier, duration)
    missing = [tier for tier in TIERS if tier not in found]
    if missing:
        raise ValueError(
            f"retention {_quote(stripped)} lacks tier {', '.join(missing)}: "
            f"give each of raw, 1m, 1h once, such as {_EXAMPLE}"
        )
    retention = Retention(*(found[tier] for tier in TIERS))
    _checkOrder(retention)
    return retention


def _checkOrder(retention: Retention) -> None:
    """
    Check that no coarser tier of C{retention} is kept shorter than a finer
    one, and that each rollup tier is kept at least its bucket.

    @raise ValueError: Naming the two tiers, or the rollup tier, at fault.
    """
    infinity = math.inf
    values = [infinity if seconds is None else seconds for seconds in retention]
    for finer in range(len(TIERS) - 1):
        coarser = finer + 1
        if values[coarser] < values[finer]:
            raise ValueError(
                f"tier {TIERS[coarser]} ({_describeDuration(retention[coarser])}) is kept "
                f"shorter than tier {TIERS[finer]} ({_describeDuration(retention[finer])}): "
                f"a coarser tier must be kept at least as long as a finer one "
                f"(raw <= 1m <= 1h)"
            )
    for index in (1, 2):
        if values[index] < _BUCKETS[index]:
            raise ValueError(
                f"tier {TIERS[index]} ({_describeDuration(retention[index])}) is kept less "
                f"than one {TIERS[index]} bucket: each row would expire as soon as it is "
                f"complete"
            )


#: The retention of every series no override matches: raw readings for 30
#: days, 1-minute rollups for a year, 1-hour rollups for ten years.
DEFAULT_RETENTION = parseRetention(_EXAMPLE)


class Override(NamedTuple):
    """
    A retention for one group of series, chosen by kind or by sensor glob.

    @ivar field: C{"kind"} (C{pattern} is an exact kind) or C{"sensor"}
        (C{pattern} is an L{fnmatch.fnmatchcase} glob over sensor names).
    @ivar pattern: The kind or the glob, as written.
    @ivar retention: The retention of the series it selects.
    """

    field: str
    pattern: str
    retention: Retention

    def describe(self) -> str:
        """
        The canonical text of this override, C{FIELD:PATTERN=SPEC};
        L{parseOverride} of it gives back an equal L{Override}.
        """
        return f"{self.field}:{self.pattern}={self.retention.describe()}"


def parseOverride(text: str) -> Override:
    """
    Parse an override, C{SELECTOR=SPEC}, where C{SPEC} is a retention as
    L{parseRetention} reads it and C{SELECTOR} is one of:

      - C{kind:NAME}: the series of exactly that kind; a kind is lower-case
        ASCII letters, digits, C{_} and C{-}, at most 64 characters;
      - C{sensor:GLOB}: the series whose sensor name matches C{GLOB} as
        L{fnmatch.fnmatchcase} does: case-sensitive; C{*} matches any run
        of characters (dots and slashes too), C{?} any one character,
        C{[seq]} and C{[!seq]} one character in or not in C{seq}; at most
        L{MAX_GLOB} characters, no control characters.

    The text splits at its last C{=}, so a glob may hold C{=} itself;
    ASCII spaces around the whole text and around the selector are ignored.

    @raise ValueError: A message for the user naming what is wrong.
    """
    stripped = _checkText(text, "override")
    selector, equals, spec = stripped.rpartition("=")
    if not equals:
        raise ValueError(
            f"override {_quote(stripped)} is not SELECTOR=SPEC, such as "
            f"kind:temperature=raw:7d,1m:1y,1h:10y or sensor:lab-*=raw:1y,1m:1y,1h:forever"
        )
    field, colon, pattern = selector.strip(" ").partition(":")
    if not colon or field not in ("kind", "sensor"):
        raise ValueError(
            f"override selector {_quote(selector)} is neither kind:NAME nor sensor:GLOB"
        )
    if field == "kind":
        if not pattern:
            raise ValueError("override kind is empty: write kind:NAME, such as kind:temperature")
        if len(pattern) > _MAX_KIND:
            raise ValueError(
                f"override kind is too long: {len(pattern)} characters, at most {_MAX_KIND}"
            )
        if _KIND.fullmatch(pattern) is None:
            raise ValueError(
                f"override kind {_quote(pattern)} may hold only lower-case ASCII letters, "
                f"digits, _ and -"
            )
    else:
        if not pattern:
            raise ValueError(
                "override sensor glob is empty: write sensor:GLOB, such as sensor:lab-*"
            )
        if len(pattern) > MAX_GLOB:
            raise ValueError(
                f"override sensor glob is too long: {len(pattern)} characters, at most {MAX_GLOB}"
            )
    return Override(field, pattern, parseRetention(spec))


class RetentionPolicy:
    """
    The retention of every series: a default and up to L{MAX_OVERRIDES}
    overrides, tried in order. Like carbon's storage schemas, the first
    override that matches a series wins; a series none matches gets the
    default. Immutable once built.

    @ivar default: The retention of series no override matches.
    @ivar overrides: The overrides, in the order they are tried.
    """

    def __init__(
        self,
        default: Retention = DEFAULT_RETENTION,
        overrides: Sequence[Override] = (),
    ) -> None:
        """
        @raise ValueError: More than L{MAX_OVERRIDES} overrides, or a
            retention whose tiers are out of order.
        """
        if len(overrides) > MAX_OVERRIDES:
            raise ValueError(f"{len(overrides)} retention overrides, at most {MAX_OVERRIDES}")
        _checkOrder(default)
        for override in overrides:
            _checkOrder(override.retention)
        self.default = default
        self.overrides: Tuple[Override, ...] = tuple(overrides)
        # forSeries runs once per new series: the first kind override of
        # each kind is a dictionary lookup, and every sensor glob is one
        # alternative of a single regular expression, compiled here once.
        # The engine tries alternatives left to right and each is anchored
        # at both ends, so the alternative that matches is the first
        # matching glob: first match wins, as among the overrides.
        self._kinds: Dict[str, int] = {}
        alternatives: List[str] = []
        self._groups: Dict[str, int] = {}
        for index, override in enumerate(self.overrides, start=1):
            if override.field == "kind":
                self._kinds.setdefault(override.pattern, index)
            else:
                group = f"override{index}"
                self._groups[group] = index
                alternatives.append(f"(?P<{group}>{fnmatch.translate(override.pattern)})")
        self._globs: Optional[re.Pattern[str]] = (
            re.compile("|".join(alternatives)) if alternatives else None
        )

    def forSeries(self, sensor: str, kind: str) -> int:
        """
        Which rule applies to the series of C{sensor} and C{kind}: the first
        override, in the order given, whose kind equals C{kind} or whose
        glob matches C{sensor}.

        @return: The rule's index in L{rules}: C{0} for the default (no
            override matches), C{i + 1} for C{overrides[i]}.
        """
        best = self._kinds.get(kind, 0)
        if self._globs is not None:
            match = self._globs.match(sensor)
            if match is not None:
                # lastgroup is the outermost group that closed last: the
                # alternative that matched, whatever groups a glob holds.
                index = self._groups[match.lastgroup or ""]
                if best == 0 or index < best:
                    best = index
        return best

    @property
    def rules(self) -> List[Retention]:
        """
        Every rule's retention, indexed as L{forSeries} answers: the default
        first, then each override's. A new list on each call.
        """
        return [self.default] + [override.retention for override in self.overrides]

    def describe(self) -> str:
        """
        The policy as text, one rule a line, numbered as L{forSeries}
        answers, such as::

            0 default raw:30d,1m:1y,1h:10y
            1 kind:humidity=raw:1w,1m:1y,1h:10y
            2 sensor:lab-*=raw:1y,1m:1y,1h:forever
        """
        lines = [f"0 default {self.default.describe()}"]
        lines.extend(
            f"{index} {override.describe()}"
            for index, override in enumerate(self.overrides, start=1)
        )
        return "\n".join(lines)


class DiskEstimate(NamedTuple):
    """
    Expected steady-state disk use of a fleet, in bytes, per tier; L{None}
    for a tier kept forever (it grows without bound).

    @ivar raw: Raw readings.
    @ivar minute: 1-minute rollups.
    @ivar hour: 1-hour rollups.
    @ivar total: The sum, or L{None} if any tier is L{None}.
    """

    raw: Optional[float]
    minute: Optional[float]
    hour: Optional[float]
    total: Optional[float]


def _checkPositive(name: str, value: float, allowZero: bool) -> None:
    """
    @raise ValueError: C{value} is not a finite number, or is negative
        (or zero, unless C{allowZero}).
    """
    if not (0 <= value < math.inf) or (value == 0 and not allowZero):
        bound = ">= 0" if allowZero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, not {value!r}")


def estimateDisk(
    policy: RetentionPolicy,
    series: int,
    interval: float,
    rawBytes: float = 12.0,
    rollupBytes: float = 48.0,
) -> DiskEstimate:
    """
    The disk that C{series} series, each reporting every C{interval}
    seconds and all under the policy's default rule, use once every tier
    is full (before indexes and the database's own overhead):

      - raw: C{series * retention / interval * rawBytes};
      - each rollup tier: C{series * retention / max(bucket, interval) *
        rollupBytes}, since a series writes at most one rollup row per
        bucket and, reporting less often than once a bucket, at most one
        per reading.

    @param rawBytes: Bytes per stored raw reading.
    @param rollupBytes: Bytes per rollup row.
    @raise ValueError: C{series} negative, C{interval} not positive, or a
        size negative or not finite.
    """
    if series < 0:
        raise ValueError(f"series must be >= 0, not {series!r}")
    _checkPositive("interval", interval, allowZero=False)
    _checkPositive("rawBytes", rawBytes, allowZero=True)
    _checkPositive("rollupBytes", rollupBytes, allowZero=True)
    retention = policy.default
    sizes: List[Optional[float]] = []
    for index, seconds in enumerate(retention):
        if seconds is None:
            sizes.append(None)
        elif index == 0:
            sizes.append(series * (seconds / interval) * rawBytes)
        else:
            sizes.append(series * (seconds / max(_BUCKETS[index], interval)) * rollupBytes)
    total: Optional[float] = None
    if all(size is not None for size in sizes):
        total = sum(size for size in sizes if size is not None)
    return DiskEstimate(sizes[0], sizes[1], sizes[2], total)


def _humanBytes(size: float) -> str:
    """
    C{size} bytes in decimal units with one decimal (C{311.0 GB}); below a
    kilobyte, whole bytes (C{512 B}); terabytes at most.
    """
    if round(size) < 1000:
        return f"{round(size)} B"
    for power, unit in ((1, "KB"), (2, "MB"), (3, "GB")):
        # Round first, so 999.96 MB reads 1.0 GB rather than 1000.0 MB.
        if round(size / 1000**power, 1) < 1000:
            return f"{size / 1000 ** power:.1f} {unit}"
    return f"{size / 1000 ** 4:.1f} TB"


def describeEstimate(estimate: DiskEstimate, series: int, interval: float) -> str:
    """
    C{estimate} as one line for a log or a command's output, such as
    C{expected disk at 20,000 series every 2 s: raw 311.0 GB + 1m 504.6 GB
    + 1h 84.1 GB = 899.7 GB}; sizes in decimal units (1 KB = 1000 bytes).
    A tier kept forever reads C{unbounded}, and so does the total, with
    C{(a tier is kept forever)}.

    @param series: The number of series the estimate is for.
    @param interval: Their reporting interval, in seconds.
    """

    def size(value: Optional[float]) -> str:
        return "unbounded" if value is None else _humanBytes(value)

    tiers = " + ".join(f"{tier} {size(value)}" for tier, value in zip(TIERS, estimate[:3]))
    if estimate.total is None:
        total = "unbounded (a tier is kept forever)"
    else:
        total = _humanBytes(estimate.total)
    return f"expected disk at {series:,} series every {interval:g} s: {tiers} = {total}"
