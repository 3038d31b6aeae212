"""
The INSTALLED C{sensornet} console script, run as a subprocess: tokens are
shown once (or written to a new 0600 file and not shown), never taken on the
command line, never listed; revoke and rotate answer with clear messages and
exit statuses; a bad store or an unknown name exits 2, an unreachable store
3; C{env:NAME} stores work on both backends.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from sensornet.identity import Registry
from sensornet.identity.tokens import looksLikeToken, newToken, tokenHash

pytestmark = pytest.mark.timeout(120)

SCRIPT = Path(sys.executable).parent / "sensornet"


def run(args: List[str], cwd: Path, env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
    """
    Run the installed script; capture its output as text.
    """
    environment = dict(os.environ)
    environment.update(env or {})
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=environment, capture_output=True, text=True,
                          timeout=60)


def valid(url: str, token: str) -> Optional[str]:
    """
    The name of the credential C{token} belongs to, as a server would see it.
    """
    registry = Registry(url)
    try:
        principal = registry.snapshot()[1].get(tokenHash(token))
    finally:
        registry.close()
    return principal.name if principal else None


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:{tmp_path / 'sensornet.db'}"


def test_the_script_is_installed_and_takes_no_token_on_its_command_line(tmp_path: Path) -> None:
    """
    The console script exists; no subcommand has an option taking a token
    itself (only files), so a token can never be in a process list.
    """
    assert SCRIPT.exists(), "pip install the package first"
    for action in ("add", "list", "revoke", "rotate"):
        result = run(["sensors", action, "--help"], tmp_path)
        assert result.returncode == 0, result.stderr
        options = {word.rstrip(",") for word in result.stdout.split() if word.startswith("--")}
        assert options <= {"--help", "--store", "--role", "--grant", "--token-file", "--import-token-file",
                           "--json"}, options


def test_add_prints_the_token_once_on_stdout(tmp_path: Path, store: str) -> None:
    result = run(["sensors", "add", "lab-1", "--store", store], tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and looksLikeToken(lines[0])
    token = lines[0]
    assert token not in result.stderr and "lab-1" in result.stderr
    assert valid(store, token) == "lab-1"


def test_token_file_is_new_0600_and_nothing_secret_is_shown(tmp_path: Path, store: str) -> None:
    path = tmp_path / "reader.token"
    result = run(["sensors", "add", "grafana", "--role", "reader", "--token-file", str(path), "--store", store],
                 tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert looksLikeToken(token) and token not in result.stderr and str(path) in result.stderr
    assert valid(store, token) == "grafana"
    # An existing file is never overwritten, and nothing is added then.
    again = run(["sensors", "add", "other", "--token-file", str(path), "--store", store], tmp_path)
    assert again.returncode == 2 and "exists already" in again.stderr
    assert path.read_text().strip() == token
    listed = run(["sensors", "list", "--store", store], tmp_path)
    assert "other" not in listed.stdout


def test_a_refused_add_leaves_no_token_file(tmp_path: Path, store: str) -> None:
    assert run(["sensors", "add", "lab-1", "--store", store], tmp_path).returncode == 0
    path = tmp_path / "dup.token"
    result = run(["sensors", "add", "lab-1", "--token-file", str(path), "--store", store], tmp_path)
    assert result.returncode == 2 and "exists already" in result.stderr
    assert not path.exists()


def test_list_shows_no_token_or_hash(tmp_path: Path, store: str) -> None:
    tokens = []
    for args in (["lab-1"], ["gw", "--role", "gateway", "--grant", "lab-*", "--grant", "roof"],
                 ["grafana", "--role", "reader"]):
        result = run(["sensors", "add", *args, "--store", store], tmp_path)
        assert result.returncode == 0, result.stderr
        tokens.append(result.stdout.strip())
    assert run(["sensors", "revoke", "lab-1", "--store", store], tmp_path).returncode == 0
    for extra in ([], ["--json"]):
        listed = run(["sensors", "list", *extra, "--store", store], tmp_path)
        assert listed.returncode == 0, listed.stderr
        for token in tokens:
            digest = tokenHash(token)
            for secret in (token, token[4:], digest.hex(), digest.hex().upper()):
                assert secret not in listed.stdout and secret not in listed.stderr
    table = run(["sensors", "list", "--store", store], tmp_path).stdout.splitlines()
    assert table[0].split()[:3] == ["NAME", "ROLE", "STATE"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["lab-1"][1:3] == ["sensor", "revoked"]
    assert rows["gw"][1:3] == ["gateway", "valid"] and rows["gw"][-1] == "lab-*,roof"
    assert rows["grafana"][1:3] == ["reader", "valid"]
    import json

    document = json.loads(run(["sensors", "list", "--json", "--store", store], tmp_path).stdout)
    assert [c["name"] for c in document["credentials"]] == ["grafana", "gw", "lab-1"]


def test_revoke_and_rotate_statuses_and_messages(tmp_path: Path, store: str) -> None:
    first = run(["sensors", "add", "lab-1", "--store", store], tmp_path).stdout.strip()
    revoked = run(["sensors", "revoke", "lab-1", "--store", store], tmp_path)
    assert revoked.returncode == 0 and "revoked 'lab-1'" in revoked.stderr and revoked.stdout == ""
    assert valid(store, first) is None
    again = run(["sensors", "revoke", "lab-1", "--store", store], tmp_path)
    assert again.returncode == 0 and "revoked already" in again.stderr
    unknown = run(["sensors", "revoke", "nobody", "--store", store], tmp_path)
    assert unknown.returncode == 2 and "no credential named 'nobody'" in unknown.stderr
    rotated = run(["sensors", "rotate", "lab-1", "--store", store], tmp_path)
    assert rotated.returncode == 0 and "rotated 'lab-1'" in rotated.stderr
    second = rotated.stdout.strip()
    assert looksLikeToken(second) and second != first
    assert valid(store, second) == "lab-1" and valid(store, first) is None
    path = tmp_path / "lab-1.token"
    third = run(["sensors", "rotate", "lab-1", "--token-file", str(path), "--store", store], tmp_path)
    assert third.returncode == 0 and third.stdout == ""
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert valid(store, path.read_text().strip()) == "lab-1" and valid(store, second) is None
    missing = run(["sensors", "rotate", "nobody", "--store", store], tmp_path)
    assert missing.returncode == 2 and "nobody" in missing.stderr


def test_import_token_file(tmp_path: Path, store: str) -> None:
    """
    A strong token made elsewhere is imported (and not echoed); a weak one
    is refused without being echoed either.
    """
    strong = tmp_path / "strong.token"
    token = newToken()
    strong.write_text(token + "\n")
    strong.chmod(0o600)
    result = run(["sensors", "add", "gw", "--role", "gateway", "--grant", "lab-*", "--import-token-file",
                  str(strong), "--store", store], tmp_path)
    assert result.returncode == 0, result.stderr
    assert token not in result.stdout + result.stderr
    assert valid(store, token) == "gw"
    weak = tmp_path / "weak.token"
    weak.write_text("abcdefghij" * 5)
    weak.chmod(0o600)
    refused = run(["sensors", "add", "weak", "--import-token-file", str(weak), "--store", store], tmp_path)
    assert refused.returncode == 2 and "too weak" in refused.stderr
    assert "abcdefghij" not in refused.stderr + refused.stdout


@pytest.mark.parametrize(
    "bad, message",
    [
        ("foo:bar", "unknown store 'foo'"),
        ("sqlite:/no/such/dir/x.db", "no such directory"),
        ("env:SENSORNET_TEST_UNSET_VARIABLE", "SENSORNET_TEST_UNSET_VARIABLE is not set"),
        ("none", "keeps no credentials"),
        ("postgresql:nohost", "postgresql://"),
    ],
)
def test_a_bad_store_is_a_clear_error(tmp_path: Path, bad: str, message: str) -> None:
    result = run(["sensors", "add", "lab-1", "--store", bad], tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and result.stdout == ""
    assert "Traceback" not in result.stderr


def test_list_of_a_missing_sqlite_file_does_not_create_it(tmp_path: Path) -> None:
    result = run(["sensors", "list", "--store", f"sqlite:{tmp_path / 'typo.db'}"], tmp_path)
    assert result.returncode == 2 and "no database" in result.stderr
    assert not (tmp_path / "typo.db").exists()


def test_env_store_on_sqlite_and_postgresql(tmp_path: Path, store: str, postgresql_db: str) -> None:
    """
    C{--store env:NAME} reads the URL (and its password) from the
    environment, as the server's option does.
    """
    for url in (store, postgresql_db):
        env = {"SENSORNET_TEST_STORE": url}
        added = run(["sensors", "add", "lab-1", "--store", "env:SENSORNET_TEST_STORE"], tmp_path, env)
        assert added.returncode == 0, added.stderr
        assert valid(url, added.stdout.strip()) == "lab-1"
        listed = run(["sensors", "list", "--store", "env:SENSORNET_TEST_STORE"], tmp_path, env)
        assert listed.returncode == 0 and "lab-1" in listed.stdout
        assert "test@" not in listed.stdout + listed.stderr


def test_an_unreachable_store_exits_3(tmp_path: Path) -> None:
    # Port 1 on loopback: connection refused at once.
    result = run(["sensors", "list", "--store", "postgresql://u:secret@127.0.0.1:1/nothing"], tmp_path)
    assert result.returncode == 3 and "cannot be reached" in result.stderr
    assert "secret" not in result.stderr
