"""
The seed dialect: the text the seed's clients send
(C{Sensor1 - Temperatura: 25.34°C}), its accepted variants, its errors, and
L{formatSeed} writing it byte for byte.
"""

import pytest

from sensornet.dialects import formatSeed, isWholeSeedMessage, parseLine
from sensornet.reading import LineError, Reading


def seed(sensor, kind, value, unit):
    return Reading(sensor, kind, value, unit, None, None, "seed")


def test_seed_document_examples():
    """
    The two messages the seed's clients send (as the seed's log shows them)
    give a temperature in C and a humidity in %.
    """
    assert parseLine("Sensor1 - Temperatura: 25.34°C".encode()) == seed("Sensor1", "temperature", 25.34, "C")
    assert parseLine(b"Sensor2 - Umidade: 61.20%") == seed("Sensor2", "humidity", 61.2, "%")


def test_carriage_return_ignored():
    """
    A trailing CR is dropped.
    """
    assert parseLine(b"Sensor2 - Umidade: 61.20%\r") == seed("Sensor2", "humidity", 61.2, "%")


@pytest.mark.parametrize(
    "word, kind",
    [
        ("Temperatura", "temperature"),
        ("TEMPERATURA", "temperature"),
        ("temperature", "temperature"),
        ("Temperature", "temperature"),
        ("Umidade", "humidity"),
        ("Humidade", "humidity"),
        ("Humidity", "humidity"),
        ("Pressão", "pressão"),
        ("CO2", "co2"),
    ],
)
def test_kind_words(word, kind):
    """
    Kind words match without regard to case, in Portuguese or English;
    other words are kept, lower-cased.
    """
    result = parseLine(f"S - {word}: 1.5".encode())
    assert isinstance(result, Reading)
    assert result.kind == kind


@pytest.mark.parametrize(
    "text, value, unit",
    [
        ("25.34°C", 25.34, "C"),
        ("25.34 °C", 25.34, "C"),
        ("25.34ºC", 25.34, "C"),
        ("25.34C", 25.34, "C"),
        ("77°F", 77.0, "F"),
        ("77 F", 77.0, "F"),
        ("25,34°C", 25.34, "C"),
        ("-3.5°C", -3.5, "C"),
        ("+2", 2.0, "C"),
        ("25", 25.0, "C"),
        (".5", 0.5, "C"),
        ("300 K", 300.0, "K"),
    ],
)
def test_values_and_units(text, value, unit):
    """
    The value takes a sign and a point or comma; the unit follows with or
    without a space; no unit means the kind's implied unit.
    """
    assert parseLine(f"Sensor1 - Temperatura: {text}".encode()) == seed("Sensor1", "temperature", value, unit)


def test_other_unit_kept_as_written():
    """
    Units the seed never sent are kept as written; a kind without an
    implied unit and no unit gets none.
    """
    assert parseLine("Sensor3 - Pressão: 1013,25 hPa".encode()) == seed("Sensor3", "pressão", 1013.25, "hPa")
    assert parseLine(b"Sensor3 - Lux: 300") == seed("Sensor3", "lux", 300.0, "")


def test_spaces_around_and_inside_name():
    """
    Surrounding whitespace is ignored and a name may hold spaces.
    """
    assert parseLine(b"  Sala 2 - Umidade:61%  ") == seed("Sala 2", "humidity", 61.0, "%")


@pytest.mark.parametrize(
    "line, message",
    [
        (b"Sensor1 - Temperatura: abc", "value is not a number: 'abc'"),
        (b"Sensor1 - Temperatura: nan", "value is not a finite number: 'nan'"),
        (b"Sensor1 - Temperatura: inf \xc2\xb0C", "value is not a finite number: 'inf'"),
        (b"Sensor1 - Temperatura: " + b"9" * 400, "value is not a finite number: '" + "9" * 32 + "...'"),
        (b"Sensor1 - Temperatura:", "value missing after the kind"),
        (b"Sensor1 - Temperatura: 1e5", "value is not a number: '1e5'"),
        (b"Sensor1 - Temperatura: 25 C extra", "expected a number and a unit after the kind: '25 C extra'"),
        (b"Sensor1 - Temperatura: 25.3.4", "value is not a number: '25.3.4'"),
        (b"Sensor\xff - Temperatura: 25", "invalid UTF-8 in sensor name"),
        (b"Sensor\x01 - Temperatura: 25", "control character in sensor name"),
        (b"S" * 129 + b" - Temperatura: 25", "sensor name is too long: 129 characters, at most 128"),
        (b"S - " + b"k" * 65 + b": 25", "kind is too long: 65 characters, at most 64"),
        (b"S - Temperatura: 25" + b"u" * 17, "unit is too long: 17 characters, at most 16"),
        (b"S - Temperatura: 25\xff", "invalid UTF-8 in unit"),
    ],
)
def test_errors(line, message):
    """
    A line that starts like seed text (C{NAME - Kind:}) but is wrong after
    that is a seed error naming the problem.
    """
    assert parseLine(line) == LineError(message, None, "seed")


def test_not_seed_text():
    """
    Without the C{NAME - Kind:} start a line is not taken for seed text.
    """
    assert parseLine(b"Sensor1 - Temperatura 25.34").dialect == "unknown"
    assert parseLine(b"Sensor1 Temperatura: 25.34").dialect == "graphite"


def test_format_seed_exact_bytes():
    """
    formatSeed writes the seed client's text byte for byte, two decimals.
    """
    assert formatSeed("Sensor1", "temperature", 25.339, "C") == "Sensor1 - Temperatura: 25.34°C".encode("utf-8")
    assert formatSeed("Sensor2", "humidity", 61.2, "%") == b"Sensor2 - Umidade: 61.20%"


def test_format_seed_reads_back():
    """
    What formatSeed writes parses back to the same sensor, kind and unit,
    with the value rounded to two decimals.
    """
    for args in [("Sensor1", "temperature", 25.339, "C"), ("Sensor2", "humidity", 61.2, "%"), ("S3", "pressão", 1013.25, "hPa")]:
        sensor, kind, value, unit = args
        assert parseLine(formatSeed(*args)) == seed(sensor, kind, round(value, 2), unit)


@pytest.mark.parametrize(
    "line, message",
    [
        (b"S - Temperatura: 25.34\xc2\xb0C extra", "expected a number and a unit after the kind: '25.34\u00b0C extra'"),
        (b"S - Temperatura: -inf\xc2\xb0C", "value is not a finite number: '-inf'"),
        (b"S - Temperatura: Infinity", "value is not a finite number: 'Infinity'"),
        (b"S - Temperatura: information", "value is not a number: 'information'"),
        (b"S - Temperatura: 25.3.4 C", "expected a number and a unit after the kind: '25.3.4 C'"),
    ],
)
def test_errors_after_valid_number(line, message):
    """
    The error after the colon names the real problem: a non-finite word, a
    word that is no number, or text the number and unit cannot explain.
    """
    assert parseLine(line) == LineError(message, None, "seed")


@pytest.mark.parametrize(
    "data, whole",
    [
        ("Sensor1 - Temperatura: 25.34°C", True),
        ("Sensor2 - Umidade: 61.2%", True),
        ("Sensor1 - Temperatura: 77.0°F", True),
        ("Sensor1 - Temperatura: 25.34", False),
        ("Sensor1 - Temperatura: 2", False),
        ("Sensor1 - Temperatura: 25.34°", False),
        ("Sensor1 - Temper", False),
        ("temperature,sensor=s value=1", False),
        ("Station - Pressure: 1013 hPa", False),
    ],
)
def test_is_whole_seed_message_only_with_the_unit_written_at_its_end(data: str, whole: bool) -> None:
    """
    An unterminated message counts as whole only when it parses as seed
    text and ends with one of the seed's units: every cut of a seed
    message before its end is not whole, so the idle rule never stores a
    truncated value.
    """
    assert isWholeSeedMessage(data.encode("utf-8")) is whole
    message = "Sensor1 - Temperatura: 25.34°C".encode("utf-8")
    assert not any(isWholeSeedMessage(message[:cut]) for cut in range(len(message)))
