"""
The native dialect: InfluxDB line protocol, one reading per line.

    temperature,sensor=client-1,unit=C value=25.34,seq=42i 1718100942123456789

The measurement (lower-cased) is the kind; the C{sensor} tag (or else the
C{host} tag) names the sensor; the C{unit} tag names the unit, implied by the
kind when absent. The field set holds exactly one numeric value field and
optionally C{seq}, an integer (C{42i} or C{42u}, 0 <= seq < 2**63). A value
field named C{value} leaves the kind as the measurement; any other key
C{k} makes the kind C{measurement.k}. The optional timestamp is integer
nanoseconds since the epoch.

Escaping follows the line protocol reference: in the measurement a
backslash escapes a comma or a space; in tag keys, tag values and field keys
it escapes a comma, an equals sign or a space; everywhere two backslashes
stand for one, and a backslash before any other character is itself. String
field values are double-quoted, with C{\\"} and C{\\\\} inside.

Three parsers live here, tried in turn by L{sensornet.dialects.parseLine}.
L{parseCanonical} reads the most common shape (the one L{formatNative} and
sensornet's client write) with a regular expression, remembering the names
read from each sensor's measurement and tags (a small bounded cache) so
that its next lines only have their fields read; L{parseFast} handles
any other everyday line (ASCII, no backslash, no double quote, no control
character) with a handful of C{bytes} operations. Both return L{None} at the
first surprise, and L{parseSlow} then handles the line with every escape
rule and says exactly what is wrong. The fast two must agree with the slow
one on every line they accept (property tests check it).
"""

from __future__ import annotations

import re
from typing import Dict, FrozenSet, List, Optional, Tuple, Union

from ..reading import LineError, Reading
from ..runs import ChunkReadings, Run
from ._common import (
    IMPLIED_UNITS,
    MAX_KIND,
    MAX_NS,
    MAX_SENSOR,
    MAX_UNIT,
    MIN_NS,
    NS_PER_SECOND,
    SEQ_LIMIT,
    BadLine,
    checkName,
    decodeName,
    decodeText,
    hasControl,
    nanoseconds,
    parseNumber,
    quote,
)

__all__ = ["parseCanonical", "parseCanonicalChunk", "parseFast", "parseSlow", "formatNative"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1
_BOOLEANS = frozenset([b"t", b"T", b"true", b"True", b"TRUE", b"f", b"F", b"false", b"False", b"FALSE"])

# ---------------------------------------------------------------------------
# Fast path
# ---------------------------------------------------------------------------


# The line this project's own client writes, and the most common shape from
# other writers: measurement, sensor tag, optional unit tag, value field,
# optional integer seq field, optional timestamp, ASCII without anything
# that needs escaping. The character classes keep out control characters,
# escapes, quotes and spaces, so the first space of such a line ends its
# head (measurement and tags) and two regular expressions read the line: one
# for the head, one for the rest.
_NAME = rb'[^\x00-\x20,=\\"\x7f-\xff]+'
_HEAD = re.compile(rb"(" + _NAME + rb"),sensor=(" + _NAME + rb")(?:,unit=(" + _NAME + rb"))?\Z").match
_REST = re.compile(rb"value=([0-9.eE+-]+)(?:,seq=([0-9]{1,19})[iu])?(?: (-?[0-9]{1,19}))?\Z").match

# A sensor sends the same head on every line, so the names decoded from a
# valid head are kept: most lines then cost a dictionary look-up for their
# head and one match for the rest. Only heads that passed every check are
# kept, and the cache is emptied when full, which bounds its memory whatever
# the senders write. It holds the result of a pure function of the head, so
# it cannot change what any line gives.
_HEADS_LIMIT = 4096
_heads: Dict[bytes, Tuple[str, str, str]] = {}


def _canonicalHead(head: bytes) -> Optional[Tuple[str, str, str]]:
    """
    Read the head of a canonical line (C{kind,sensor=S[,unit=U]}) into
    C{(sensor, kind, unit)}, or L{None} when it has another shape or a name
    is too long; remember a valid head in L{_heads}.
    """
    match = _HEAD(head)
    if match is None:
        return None
    meas, sensorRaw, unitRaw = match.groups()
    # The character classes admit ASCII only: decode() cannot fail.
    sensor = sensorRaw.decode()
    kind = meas.lower().decode()
    if len(sensor) > MAX_SENSOR or len(kind) > MAX_KIND:
        return None
    if unitRaw is None:
        unit = IMPLIED_UNITS.get(kind, "")
    else:
        unit = unitRaw.decode()
        if len(unit) > MAX_UNIT:
            return None
    if len(_heads) >= _HEADS_LIMIT:
        _heads.clear()
    names = _heads[head] = (sensor, kind, unit)
    return names


def parseCanonical(line: bytes) -> Optional[Reading]:
    """
    Parse the everyday native line in its most common shape
    (C{kind,sensor=S[,unit=U] value=V[,seq=Ni] [ns]}) as fast as pure
    Python allows.

    Returns the reading, or L{None} when the line has any other shape or
    anything is wrong with it (the caller then tries L{parseFast} and
    L{parseSlow}).
    """
    head, _, rest = line.partition(b" ")
    names = _heads.get(head)
    if names is None:
        names = _canonicalHead(head)
        if names is None:
            return None
    match = _REST(rest)
    if match is None:
        return None
    valueRaw, seqRaw, tsRaw = match.groups()
    try:
        value = float(valueRaw)
    except ValueError:
        return None
    if value - value != 0.0:
        return None
    if seqRaw is None:
        seq = None
    else:
        seq = int(seqRaw)
        if seq >= SEQ_LIMIT:
            return None
    if tsRaw is None:
        ts = None
    else:
        ns = int(tsRaw)
        if ns > MAX_NS or ns < MIN_NS:
            return None
        ts = ns / NS_PER_SECOND
    return Reading(names[0], names[1], value, names[2], ts, seq, "native")


# The canonical shape of L{_HEAD} and L{_REST} as one line of a chunk: with
# MULTILINE, ^ and $ are a line's ends, and no group admits a newline, so a
# match is always one whole line.
_CHUNK = re.compile(
    rb"^(" + _NAME + rb",sensor=" + _NAME + rb"(?:,unit=" + _NAME + rb")?) "
    rb"value=([0-9.eE+-]+)(?:,seq=([0-9]{1,19})[iu])?(?: (-?[0-9]{1,19}))?$",
    re.MULTILINE,
).findall


def parseCanonicalChunk(lines: List[bytes], peer: str = "", receivedAt: float = 0.0) -> Optional[ChunkReadings]:
    """
    All of C{lines} (a chunk's complete lines, without their C{\n}) parsed
    as L{parseCanonical} parses each, in one pass over the chunk in C and
    one short loop: what a relay's chunk of hundreds of readings costs.

    Returns the readings as runs (L{ChunkReadings}: grouped by head as they
    are parsed, so that the store can plan them per run, and with each
    line's seq in line order), stamped with C{peer} and C{receivedAt}: as a
    sequence, exactly the readings L{parseCanonical} gives line by line,
    though none is made unless asked for. Or L{None} when any line is not in
    the canonical shape or anything in one is wrong (a name not seen before
    included): the caller then parses line by line, which says what is
    wrong where. Never raises.
    """
    try:
        matches = _CHUNK(b"\n".join(lines))
        if len(matches) != len(lines):
            return None
        heads = _heads
        runs: Dict[bytes, Run] = {}
        lineSeqs: List[Optional[int]] = []
        addSeq = lineSeqs.append
        for index, (head, valueRaw, seqRaw, tsRaw) in enumerate(matches):
            run = runs.get(head)
            if run is None:
                names = heads.get(head)
                if names is None:
                    return None
                run = runs[head] = (names, [], [], [], [])
            value = float(valueRaw)
            if value - value != 0.0:
                return None
            if seqRaw:
                seq: Optional[int] = int(seqRaw)
                if seq >= SEQ_LIMIT:  # type: ignore[operator]
                    return None
            else:
                seq = None
            if tsRaw:
                ns: Optional[int] = int(tsRaw)
                if ns > MAX_NS or ns < MIN_NS:  # type: ignore[operator]
                    return None
            else:
                ns = None
            _, positions, values, seqs, times = run
            positions.append(index)
            values.append(value)
            seqs.append(seq)
            times.append(ns)
            addSeq(seq)
        return ChunkReadings(runs, lineSeqs, peer, receivedAt)
    except Exception:
        return None


def parseFast(head: bytes, rest: bytes) -> Optional[Reading]:
    """
    Parse the everyday native line, already split at its first space into
    C{head} (measurement and tags) and C{rest} (fields and timestamp).

    The caller promises the line is ASCII and holds no backslash, no double
    quote and no control character. Returns the reading, or L{None} when
    anything at all is unusual (the caller then asks L{parseSlow}).
    """
    fields, _, tsRaw = rest.partition(b" ")
    meas, _, tagSet = head.partition(b",")
    if not meas or not tagSet:
        return None
    sensorRaw = hostRaw = unitRaw = None
    for tag in tagSet.split(b","):
        key, _, val = tag.partition(b"=")
        if not key or not val or b"=" in val:
            return None
        if key == b"sensor":
            if sensorRaw is not None:
                return None
            sensorRaw = val
        elif key == b"unit":
            if unitRaw is not None:
                return None
            unitRaw = val
        elif key == b"host":
            if hostRaw is not None:
                return None
            hostRaw = val
    if sensorRaw is None:
        sensorRaw = hostRaw
        if sensorRaw is None:
            return None

    seq = None
    valueKey = valueRaw = b""
    for field in fields.split(b","):
        key, _, val = field.partition(b"=")
        if not val or b"=" in val:
            return None
        if key == b"seq":
            if seq is not None or len(val) > 20:
                return None
            digits = val[:-1]
            if not digits.isdigit() or val[-1:] not in b"iu":
                return None
            seq = int(digits)
            if seq >= SEQ_LIMIT:
                return None
        else:
            if valueRaw or not key:
                return None
            valueKey = key
            valueRaw = val
    if not valueRaw:
        return None

    last = valueRaw[-1]
    if last == 105 or last == 117:  # b"i", b"u"
        digits = valueRaw[:-1]
        if len(digits) > 20:
            return None
        if digits.isdigit():
            number = int(digits)
            if number > (_INT64_MAX if last == 105 else _UINT64_MAX):
                return None
        elif last == 105 and digits[:1] == b"-" and digits[1:].isdigit():
            number = int(digits)
            if number < _INT64_MIN:
                return None
        else:
            return None
        value = float(number)
    else:
        if b"_" in valueRaw:
            return None
        try:
            value = float(valueRaw)
        except ValueError:
            return None
        if value - value != 0.0:
            return None

    if tsRaw:
        if len(tsRaw) > 20:
            return None
        if tsRaw.isdigit() or (tsRaw[:1] == b"-" and tsRaw[1:].isdigit()):
            ns = int(tsRaw)
            if ns > MAX_NS or ns < MIN_NS:
                return None
            ts: Optional[float] = ns / NS_PER_SECOND
        else:
            return None
    else:
        ts = None

    sensor = sensorRaw.decode()
    if len(sensor) > MAX_SENSOR:
        return None
    if valueKey == b"value":
        kind = meas.lower().decode()
    else:
        kind = (meas + b"." + valueKey).lower().decode()
    if len(kind) > MAX_KIND:
        return None
    if unitRaw is None:
        unit = IMPLIED_UNITS.get(kind, "")
    else:
        unit = unitRaw.decode()
        if len(unit) > MAX_UNIT:
            return None
    return Reading(sensor, kind, value, unit, ts, seq, "native")


# ---------------------------------------------------------------------------
# Thorough path
# ---------------------------------------------------------------------------

# A line cut into pieces: an escape pair (or a lone backslash at the end), one
# of the four characters with a meaning, or a run of ordinary bytes.
_CHUNKS = re.compile(rb'\\[\s\S]?|[, ="]|[^\\, ="]+').findall

_MEASUREMENT_ESCAPES = frozenset([b",", b" ", b"\\"])
_KEY_ESCAPES = frozenset([b",", b"=", b" ", b"\\"])
_STRING_ESCAPES = frozenset([b'"', b"\\"])

# Parser states.
_MEAS, _TAG_KEY, _TAG_VALUE, _FIELD_KEY, _FIELD_VALUE, _STRING, _AFTER_STRING, _TIMESTAMP = range(8)


class _StringValue(bytes):
    """
    The bytes of a double-quoted field value, told apart from the raw text
    of an unquoted one.
    """


_Field = Tuple[bytes, bytes]


def _unescape(chunk: bytes, escapes: FrozenSet[bytes]) -> bytes:
    if chunk[1:] in escapes:
        return chunk[1:]
    return chunk


def _readSeq(raw: bytes) -> int:
    """
    Read a C{seq} field's raw text (C{42i} or C{42u}).

    @raise BadLine: when it is not an integer in 0 <= seq < 2**63.
    """
    if isinstance(raw, _StringValue) or raw[-1:] not in (b"i", b"u"):
        raise BadLine(f"seq must be an integer such as 42i: {quote(raw)}")
    digits = raw[:-1]
    if digits[:1] == b"+":
        digits = digits[1:]
    negative = digits[:1] == b"-"
    if negative:
        digits = digits[1:]
    if not digits.isdigit() or not digits.isascii():
        raise BadLine(f"seq must be an integer such as 42i: {quote(raw)}")
    if negative or len(digits) > 19 or int(digits) >= SEQ_LIMIT:
        raise BadLine(f"seq out of range (0 <= seq < 2**63): {quote(raw)}")
    return int(digits)


def _seqOf(fields: List[_Field]) -> Optional[int]:
    """
    The C{seq} among the fields read so far, if there is exactly one and it
    is valid; L{None} otherwise.
    """
    found = [raw for key, raw in fields if key == b"seq"]
    if len(found) != 1:
        return None
    try:
        return _readSeq(found[0])
    except BadLine:
        return None


def _tokenize(line: bytes) -> Tuple[bytes, List[_Field], List[_Field], bytes]:
    """
    Cut a line into measurement, tags, fields and timestamp, undoing the
    escapes.

    @raise BadLine: the line breaks the line protocol's grammar; C{seq} is
        set when a valid C{seq} field was among the fields read. A mistake in
        the tag set is reported only once the fields have been read, so that
        the error can name the seq.
    """
    state = _MEAS
    meas = b""
    tags: List[_Field] = []
    fields: List[_Field] = []
    key = b""
    buf: List[bytes] = []
    tagError: Optional[str] = None
    for chunk in _CHUNKS(line):
        if state == _STRING:
            if chunk == b'"':
                fields.append((key, _StringValue(b"".join(buf))))
                state = _AFTER_STRING
            elif chunk[:1] == b"\\":
                buf.append(_unescape(chunk, _STRING_ESCAPES))
            else:
                buf.append(chunk)
            continue
        if state == _AFTER_STRING:
            if chunk == b",":
                state = _FIELD_KEY
                buf = []
                continue
            if chunk == b" ":
                state = _TIMESTAMP
                buf = []
                continue
            raise BadLine("text after a quoted field value", _seqOf(fields))
        if state == _MEAS:
            if chunk == b"," or chunk == b" ":
                meas = b"".join(buf)
                state = _TAG_KEY if chunk == b"," else _FIELD_KEY
                buf = []
            elif chunk[:1] == b"\\":
                buf.append(_unescape(chunk, _MEASUREMENT_ESCAPES))
            else:
                buf.append(chunk)
        elif state == _TAG_KEY:
            if chunk == b"=":
                key = b"".join(buf)
                state = _TAG_VALUE
                buf = []
            elif chunk == b"," or chunk == b" ":
                if tagError is None:
                    tagError = "tag key is empty" if not buf else f"tag without a value: {quote(b''.join(buf))}"
                state = _TAG_KEY if chunk == b"," else _FIELD_KEY
                buf = []
            elif chunk[:1] == b"\\":
                buf.append(_unescape(chunk, _KEY_ESCAPES))
            else:
                buf.append(chunk)
        elif state == _TAG_VALUE:
            if chunk == b"," or chunk == b" ":
                tags.append((key, b"".join(buf)))
                state = _TAG_KEY if chunk == b"," else _FIELD_KEY
                buf = []
            elif chunk == b"=":
                if tagError is None:
                    tagError = f"unescaped '=' in the value of tag {quote(key)}"
                buf.append(chunk)
            elif chunk[:1] == b"\\":
                buf.append(_unescape(chunk, _KEY_ESCAPES))
            else:
                buf.append(chunk)
        elif state == _FIELD_KEY:
            if chunk == b"=":
                key = b"".join(buf)
                state = _FIELD_VALUE
                buf = []
            elif chunk == b"," or chunk == b" ":
                if not buf:
                    raise BadLine("field key is empty", _seqOf(fields))
                raise BadLine(f"field without a value: {quote(b''.join(buf))}", _seqOf(fields))
            elif chunk[:1] == b"\\":
                buf.append(_unescape(chunk, _KEY_ESCAPES))
            else:
                buf.append(chunk)
        elif state == _FIELD_VALUE:
            if chunk == b'"' and not buf:
                state = _STRING
            elif chunk == b"," or chunk == b" ":
                fields.append((key, b"".join(buf)))
                state = _FIELD_KEY if chunk == b"," else _TIMESTAMP
                buf = []
            elif chunk == b"=" or chunk == b'"':
                raise BadLine(f"invalid value of field {quote(key)}", _seqOf(fields))
            else:
                # Unquoted field values have no escapes: a backslash is
                # part of the (then invalid) number.
                buf.append(chunk)
        else:  # _TIMESTAMP
            buf.append(chunk)

    timestamp = b""
    if state == _STRING:
        raise BadLine(f"unterminated string in field {quote(key)}", _seqOf(fields))
    elif state == _FIELD_VALUE:
        fields.append((key, b"".join(buf)))
    elif state == _TIMESTAMP:
        timestamp = b"".join(buf)
    elif state == _FIELD_KEY:
        if buf:
            raise BadLine(f"field without a value: {quote(b''.join(buf))}", _seqOf(fields))
        if fields:
            raise BadLine("field set ends with a comma", _seqOf(fields))
        raise BadLine("no field set (expected 'measurement,tags fields [timestamp]')")
    elif state != _AFTER_STRING:
        raise BadLine("no field set (expected 'measurement,tags fields [timestamp]')")
    if tagError is not None:
        raise BadLine(tagError, _seqOf(fields))
    return meas, tags, fields, timestamp


def _readTimestamp(raw: bytes) -> Optional[float]:
    """
    Turn the timestamp text (integer nanoseconds, or nothing) into seconds.
    """
    raw = raw.rstrip(b" ")
    if not raw:
        return None
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or not digits.isascii():
        raise BadLine(f"timestamp is not an integer number of nanoseconds: {quote(raw)}")
    if len(digits) > 19:
        raise BadLine(f"timestamp out of range: {quote(raw)}")
    ns = int(raw)
    if ns > MAX_NS or ns < MIN_NS:
        raise BadLine(f"timestamp out of range: {quote(raw)}")
    return ns / NS_PER_SECOND


def _readValue(key: bytes, raw: bytes) -> float:
    """
    Read the value field as a finite float.
    """
    name = "value" if key == b"value" else f"field {quote(key)}"
    if isinstance(raw, _StringValue):
        raise BadLine(f"{name} is a string, not a number")
    if raw in _BOOLEANS:
        raise BadLine(f"{name} is a boolean, not a number")
    if not raw:
        raise BadLine(f"{name} is empty")
    last = raw[-1:]
    if last == b"i" or last == b"u":
        digits = raw[:-1]
        body = digits[1:] if digits[:1] in (b"-", b"+") else digits
        if not body.isdigit() or not body.isascii() or (last == b"u" and digits[:1] == b"-"):
            raise BadLine(f"{name} is not an integer: {quote(raw)}")
        if len(body) > 20:
            raise BadLine(f"{name} out of range for a 64-bit integer: {quote(raw)}")
        number = int(digits)
        low, high = (_INT64_MIN, _INT64_MAX) if last == b"i" else (0, _UINT64_MAX)
        if not low <= number <= high:
            raise BadLine(f"{name} out of range for a 64-bit integer: {quote(raw)}")
        return float(number)
    return parseNumber(raw, name)


def parseSlow(line: bytes) -> Union[Reading, LineError]:
    """
    Parse any line that looks like line protocol, with every escape rule,
    and say exactly what is wrong when it is malformed.
    """
    seq: Optional[int] = None
    try:
        meas, tags, fields, tsRaw = _tokenize(line.rstrip(b" "))
        seqFields = [raw for key, raw in fields if key == b"seq"]
        if len(seqFields) > 1:
            raise BadLine("more than one seq field")
        if seqFields:
            seq = _readSeq(seqFields[0])
        values = [(key, raw) for key, raw in fields if key != b"seq"]
        if not values:
            raise BadLine("no value field (expected value=<number>)")
        if len(values) > 1:
            raise BadLine("one value field per line")
        valueKey, valueRaw = values[0]
        if not valueKey:
            raise BadLine("field key is empty")
        value = _readValue(valueKey, valueRaw)

        kindText = meas if valueKey == b"value" else meas + b"." + valueKey
        if not meas:
            raise BadLine("measurement is empty")
        kind = decodeText(kindText, "kind").lower()
        checkName(kind, "kind", MAX_KIND)

        found = {}
        for tagKey, tagValue in tags:
            if not tagKey:
                raise BadLine("tag key is empty")
            if not tagValue:
                raise BadLine(f"tag {quote(tagKey)} has an empty value")
            if tagKey in (b"sensor", b"host", b"unit"):
                if tagKey in found:
                    raise BadLine(f"duplicate tag {quote(tagKey)}")
                found[tagKey] = tagValue
        sensorRaw = found.get(b"sensor", found.get(b"host"))
        if sensorRaw is None:
            raise BadLine("sensor tag missing")
        sensor = decodeName(sensorRaw, "sensor name", MAX_SENSOR)
        unitRaw = found.get(b"unit")
        unit = IMPLIED_UNITS.get(kind, "") if unitRaw is None else decodeName(unitRaw, "unit", MAX_UNIT)
        ts = _readTimestamp(tsRaw)
    except BadLine as e:
        return LineError(e.message, seq if e.seq is None else e.seq, "native")
    return Reading(sensor, kind, value, unit, ts, seq, "native")


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------

_MEASUREMENT_TABLE = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ "})
_KEY_TABLE = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ ", "=": "\\="})


def formatNative(reading: Reading) -> bytes:
    """
    Write C{reading} as one native line, without the newline.

    The measurement is the kind, the tags are C{sensor} and (when not empty)
    C{unit}, the fields are C{value} (written with C{repr} so that no digit
    is lost) and C{seq} (when not L{None}), and the timestamp is C{ts} in
    whole nanoseconds (when not L{None}). For every reading L{parseFast} or
    L{parseSlow} can return, parsing the result gives the reading back.

    @raise ValueError: when the reading cannot be written: a non-finite
        value, an empty sensor or kind, a control character in a name, a
        C{seq} or C{ts} out of range.
    """
    sensor, kind, unit = reading.sensor, reading.kind, reading.unit
    if not sensor or not kind or hasControl(sensor) or hasControl(kind) or hasControl(unit):
        raise ValueError(f"cannot write a reading with these names: {reading!r}")
    value = float(reading.value)
    if value - value != 0.0:
        raise ValueError(f"cannot write a non-finite value: {reading!r}")
    parts = [
        kind.translate(_MEASUREMENT_TABLE),
        ",sensor=",
        sensor.translate(_KEY_TABLE),
    ]
    if unit:
        parts += [",unit=", unit.translate(_KEY_TABLE)]
    parts += [" value=", repr(value)]
    if reading.seq is not None:
        if not 0 <= reading.seq < SEQ_LIMIT:
            raise ValueError(f"seq out of range: {reading!r}")
        parts += [",seq=", str(int(reading.seq)), "i"]
    if reading.ts is not None:
        ns = nanoseconds(float(reading.ts))
        if not MIN_NS <= ns <= MAX_NS:
            raise ValueError(f"timestamp out of range: {reading!r}")
        parts += [" ", str(ns)]
    return "".join(parts).encode("utf-8")
