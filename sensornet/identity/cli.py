"""
The C{sensornet} admin command (a console script installed with the
package): provision, list, revoke and rotate credentials in a store.

    sensornet sensors add NAME [--role sensor|gateway|reader] [--grant PATTERN]...
                          [--token-file PATH] [--import-token-file PATH] [--store URL]
    sensornet sensors list [--json] [--store URL]
    sensornet sensors revoke NAME [--store URL]
    sensornet sensors rotate NAME [--token-file PATH] [--import-token-file PATH] [--store URL]

C{--store} takes what the server's C{--store} takes (C{sqlite:PATH},
C{postgresql://...}, C{env:NAME}); the default is the server's default.

Secrets: a token never appears on the command line (only file paths do),
in a log or in C{list}. A new token is printed once on standard output, or,
with C{--token-file}, written to a new file of mode 0600 and not shown at
all. Messages go to standard error.

Exit status: 0 done (also for revoking a credential revoked already, which
says so); 2 refused (bad usage or store URL, unknown or taken name, weak or
unreadable token, existing token file); 3 the store could not be reached
(try again).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from typing import List, Mapping, Optional, Sequence, TextIO

from ..store.base import DEFAULT_STORE, StoreUnavailable, parseStoreURL
from .registry import ROLES, Credential, Registry, RegistryError
from .tokens import MAX_TOKEN_LENGTH, newToken

__all__ = ["main", "resolveStoreURL", "replaceTokenFile", "EXIT_OK", "EXIT_REFUSED", "EXIT_UNAVAILABLE"]

EXIT_OK = 0
EXIT_REFUSED = 2
EXIT_UNAVAILABLE = 3


class _Refused(Exception):
    """
    A user error: the message is printed and the command exits with 2.
    """


def resolveStoreURL(text: str, environ: Optional[Mapping[str, str]] = None) -> str:
    """
    The store URL C{text} names, as the server reads C{--store}: C{env:NAME}
    is the value of environment variable C{NAME}; anything else must parse
    as a store URL (C{none} is refused: there is no registry without a
    store).

    @raise ValueError: With a message fit for a user (never the URL's
        password).
    """
    url = text
    if text.startswith("env:"):
        name = text[len("env:"):]
        url = (os.environ if environ is None else environ).get(name, "")
        if not url:
            raise ValueError(f"--store {text}: environment variable {name} is not set")
    if url == "none":
        raise ValueError("--store none keeps no credentials: name the server's store")
    parsed = parseStoreURL(url)
    if parsed.backend == "sqlite" and parsed.target != ":memory:":
        folder = os.path.dirname(os.path.abspath(parsed.target))
        if not os.path.isdir(folder):
            raise ValueError(f"--store: no such directory {folder!r}")
    return url


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sensornet",
        description="Administer a sensornet store's credentials (see docs/security.md).",
    )
    commands = parser.add_subparsers(dest="group", metavar="sensors", required=True)
    sensors = commands.add_parser("sensors", help="sensor, gateway and reader credentials")
    actions = sensors.add_subparsers(dest="action", metavar="add|list|revoke|rotate", required=True)

    def storeOption(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--store", default=DEFAULT_STORE, metavar="URL",
            help=f"the server's store: sqlite:PATH, postgresql://..., env:NAME (default {DEFAULT_STORE})",
        )

    def tokenOptions(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--token-file", metavar="PATH",
            help="write the token to this new file (mode 0600) instead of printing it",
        )
        p.add_argument(
            "--import-token-file", metavar="PATH",
            help="use the token in this file (made elsewhere, at least 128 bits) instead of a new one",
        )

    add = actions.add_parser("add", help="add a credential; its token is shown once")
    add.add_argument("name", metavar="NAME", help="the sensor's name (or the gateway's, the reader's)")
    add.add_argument("--role", choices=ROLES, default="sensor",
                     help="sensor (writes as NAME), gateway (writes for its grants), reader (reads the API)")
    add.add_argument("--grant", action="append", default=[], metavar="PATTERN",
                     help="for a gateway: a sensor name or a prefix ending in '*'; repeatable")
    tokenOptions(add)
    storeOption(add)

    listing = actions.add_parser("list", help="list credentials (never tokens)")
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    storeOption(listing)

    revoke = actions.add_parser("revoke", help="revoke a credential on every server sharing the store")
    revoke.add_argument("name", metavar="NAME")
    storeOption(revoke)

    rotate = actions.add_parser("rotate", help="replace a credential's token (reinstates a revoked one)")
    rotate.add_argument("name", metavar="NAME")
    tokenOptions(rotate)
    storeOption(rotate)
    return parser


def _time(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    return datetime.fromtimestamp(seconds, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _listing(credentials: Sequence[Credential], out: TextIO, asJSON: bool) -> None:
    if asJSON:
        json.dump(
            {"credentials": [
                {"name": c.name, "role": c.role, "sensor_id": c.sensor, "grants": list(c.grants),
                 "state": "revoked" if c.revoked else "valid", "created_at": _time(c.createdAt),
                 "rotated_at": _time(c.rotatedAt) if c.rotatedAt else None,
                 "revoked_at": _time(c.revokedAt) if c.revokedAt else None}
                for c in credentials
            ]},
            out, indent=2,
        )
        out.write("\n")
        return
    rows = [("NAME", "ROLE", "STATE", "CREATED", "ROTATED", "REVOKED", "GRANTS")]
    for c in credentials:
        rows.append((c.name, c.role, "revoked" if c.revoked else "valid", _time(c.createdAt),
                     _time(c.rotatedAt), _time(c.revokedAt), ",".join(c.grants) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        out.write("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1] + "\n")


def _readToken(path: str, err: TextIO) -> str:
    """
    The token in file C{path}: its first line, without surrounding
    whitespace. Warns when others may read the file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_TOKEN_LENGTH * 4 + 2)
            mode = os.fstat(f.fileno()).st_mode
    except OSError as e:
        raise _Refused(f"cannot read the token file {path!r}: {e.strerror}")
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise _Refused(f"the token file {path!r} is not text")
    if not lines or not lines[0].strip():
        raise _Refused(f"the token file {path!r} is empty")
    if mode & 0o077:
        err.write(f"sensornet: warning: {path} may be read by other users (chmod 600 it)\n")
    return lines[0].strip()


def _newTokenFile(path: str) -> int:
    """
    Create C{path} for writing, mode 0600, refusing an existing file (a
    token file is never overwritten; nor followed if it is a symlink).
    """
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise _Refused(f"the token file {path!r} exists already: remove it or name another")
    except OSError as e:
        raise _Refused(f"cannot create the token file {path!r}: {e.strerror}")


def replaceTokenFile(path: str, token: str) -> None:
    """
    Write C{token} (one line) to C{path}, replacing any file there
    atomically: a new file of mode 0600 beside it, then renamed over it.
    The token file of a rotated credential is replaced this way (the demo's
    files; C{--token-file} never replaces).

    @raise OSError: The file could not be written (nothing replaced).
    """
    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


def _issue(args: argparse.Namespace, registry: Registry, out: TextIO, err: TextIO) -> None:
    """
    Add or rotate, writing the token file (made before the change, so that
    a token is never committed without a place to put it) or printing it.
    """
    imported = args.import_token_file is not None
    token = _readToken(args.import_token_file, err) if imported else newToken()
    fd = _newTokenFile(args.token_file) if args.token_file else None
    try:
        if args.action == "add":
            registry.add(args.name, role=args.role, grants=args.grant, token=token)
        else:
            registry.rotate(args.name, token=token)
    except BaseException:
        if fd is not None:
            os.close(fd)
            os.unlink(args.token_file)
        raise
    verb = "added" if args.action == "add" else "rotated"
    what = f"{args.role} {args.name!r}" if args.action == "add" else repr(args.name)
    if fd is not None:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(token + "\n")
        err.write(f"sensornet: {verb} {what}; token written to {args.token_file}\n")
    elif imported:
        err.write(f"sensornet: {verb} {what} with the token of {args.import_token_file}\n")
    else:
        err.write(f"sensornet: {verb} {what}; its token (shown once, only a hash is kept):\n")
        out.write(token + "\n")
        out.flush()


def main(argv: Optional[List[str]] = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """
    Run the command; returns the exit status (see the module docstring).
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0) and EXIT_REFUSED
    try:
        url = resolveStoreURL(args.store)
        registry = Registry(url)
    except ValueError as e:
        err.write(f"sensornet: error: {e}\n")
        return EXIT_REFUSED
    try:
        if args.action in ("list", "revoke", "rotate"):
            parsed = parseStoreURL(url)
            if parsed.backend == "sqlite" and not os.path.exists(parsed.target):
                # Not a new empty store: a misspelt path would list nothing.
                raise _Refused(f"--store: no database at {parsed.target!r}")
        if args.action in ("add", "rotate"):
            _issue(args, registry, out, err)
        elif args.action == "list":
            _listing(registry.list(), out, args.json)
        elif registry.revoke(args.name):
            err.write(f"sensornet: revoked {args.name!r} (every server sharing the store refuses it within "
                      "its poll interval)\n")
        else:
            err.write(f"sensornet: {args.name!r} was revoked already\n")
    except (_Refused, RegistryError) as e:
        err.write(f"sensornet: error: {e}\n")
        return EXIT_REFUSED
    except StoreUnavailable as e:
        err.write(f"sensornet: error: the store cannot be reached: {e}\n")
        return EXIT_UNAVAILABLE
    finally:
        registry.close()
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
