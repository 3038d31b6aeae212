"""
The seed dialect: the text the seed's sensor clients send.

    Sensor1 - Temperatura: 25.34°C
    Sensor2 - Umidade: 61.20%

C{NAME - Kind: VALUE[ ]UNIT}. The kind is one word, matched without regard
to case: C{Temperatura} and C{Temperature} give the kind C{temperature},
C{Umidade}, C{Humidade} and C{Humidity} give C{humidity}, and any other word
is kept, lower-cased (C{Pressão} gives C{pressão}). The value is a decimal
number with an optional sign and either a point or a comma as the decimal
separator (C{25.34}, C{25,34}, C{-3}); no exponent, no thousands separator.
The unit follows the number, with or without a space: C{°C} or C{ºC} or
C{C} give C{C}, C{°F} or C{ºF} or C{F} give C{F}, C{%} gives C{%}; any other
unit is kept as written (at most 16 characters); none means the kind's
implied unit (C{C} for temperature, C{%} for humidity, else none). A seed
line carries neither timestamp nor seq.
"""

from __future__ import annotations

import re
from typing import Optional, Union

from ..reading import LineError, Reading
from ._common import (
    IMPLIED_UNITS,
    MAX_KIND,
    MAX_SENSOR,
    MAX_UNIT,
    BadLine,
    checkName,
    decodeName,
    decodeText,
    parseNumber,
    quote,
)

__all__ = ["parseSeed", "formatSeed"]

# The name may hold spaces but no "=" or '"', so that no line-protocol line
# (whose tag set always holds an "=") is ever taken for seed text.
_HEAD = rb'\s*([^="]+?) - ([^\s:=",]{1,256})\s*:'
_NUMBER = rb"([+-]?(?:[0-9]+(?:[.,][0-9]*)?|[.,][0-9]+))"
# A unit never starts like a number or an exponent ("1e5" is no "1 e5").
_UNIT = rb"[ \t]*((?![eE][0-9+-])[^\s0-9.,+-]\S*)?"

#: The whole line, for the everyday case.
_LINE = re.compile(_HEAD + rb"[ \t]*" + _NUMBER + _UNIT + rb"\s*\Z", re.S).match
#: Only the head, to tell a malformed seed line from another dialect.
_HEAD_ONLY = re.compile(_HEAD + rb"\s*(.*?)\s*\Z", re.S).match
#: What follows the colon, once the head matched.
_VALUE = re.compile(_NUMBER + _UNIT + rb"\Z").match
#: What follows the colon starts like a number / like nan or infinity.
_NUMBER_START = re.compile(rb"[+-]?[.,]?[0-9]").match
_NOT_FINITE = re.compile(rb"[+-]?(?:nan|inf(?:inity)?)(?![a-z])", re.I).match

_KINDS = {
    "temperatura": "temperature",
    "temperature": "temperature",
    "umidade": "humidity",
    "humidade": "humidity",
    "humidity": "humidity",
}

_UNITS = {
    "°C".encode(): "C",
    "ºC".encode(): "C",
    b"C": "C",
    "°F".encode(): "F",
    "ºF".encode(): "F",
    b"F": "F",
    b"%": "%",
    b"": "",
}

# The words formatSeed writes for the kinds the seed knew.
_SEED_WORDS = {"temperature": "Temperatura", "humidity": "Umidade"}
_SEED_UNITS = {"C": "°C", "F": "°F"}


def _reading(nameRaw: bytes, kindRaw: bytes, valueRaw: bytes, unitRaw: Optional[bytes]) -> Reading:
    sensor = decodeName(nameRaw.strip(), "sensor name", MAX_SENSOR)
    word = decodeText(kindRaw, "kind").lower()
    kind = _KINDS.get(word, word)
    checkName(kind, "kind", MAX_KIND)
    value = parseNumber(valueRaw.replace(b",", b"."))
    if unitRaw is None:
        unitRaw = b""
    unit = _UNITS.get(unitRaw)
    if unit is None:
        unit = decodeName(unitRaw, "unit", MAX_UNIT)
    if not unit:
        unit = IMPLIED_UNITS.get(kind, "")
    return Reading(sensor, kind, value, unit, None, None, "seed")


def parseSeed(line: bytes) -> Union[Reading, LineError, None]:
    """
    Parse C{line} as seed text.

    @return: the reading; a L{LineError} (dialect C{"seed"}) when the line
        starts like seed text (C{NAME - Kind:}) but the rest is wrong; or
        L{None} when the line is not seed text at all.
    """
    try:
        match = _LINE(line)
        if match is not None:
            return _reading(*match.groups())
        head = _HEAD_ONLY(line)
        if head is None:
            return None
        nameRaw, kindRaw, rest = head.groups()
        if not rest:
            raise BadLine("value missing after the kind")
        value = _VALUE(rest)
        if value is None:
            word = _NOT_FINITE(rest)
            if word is not None:
                raise BadLine(f"value is not a finite number: {quote(word.group())}")
            tokens = rest.split()
            if len(tokens) == 1 or _NUMBER_START(rest) is None:
                raise BadLine(f"value is not a number: {quote(tokens[0])}")
            raise BadLine(f"expected a number and a unit after the kind: {quote(rest)}")
        return _reading(nameRaw, kindRaw, *value.groups())
    except BadLine as e:
        return LineError(e.message, None, "seed")


def formatSeed(sensorName: str, kind: str, value: float, unit: str) -> bytes:
    """
    Write one reading as the seed's client did, without a line terminator:
    C{formatSeed("Sensor1", "temperature", 25.339, "C")} gives
    C{"Sensor1 - Temperatura: 25.34°C"} in UTF-8.

    The kinds C{temperature} and C{humidity} are written with the seed's
    Portuguese words, any other kind as given; the value with two decimals;
    the units C{C} and C{F} as C{°C} and C{°F}, any other unit as given,
    right after the number.
    """
    word = _SEED_WORDS.get(kind.lower(), kind)
    text = f"{sensorName} - {word}: {value:.2f}{_SEED_UNITS.get(unit, unit)}"
    return text.encode("utf-8")
