"""
Stand-ins for the parts of an Amazon Linux 2023 instance the rehearsal cannot
use: the OS package manager, the OS's python3, systemd, and the aws CLI's
Secrets Manager (the AWS API behind it).

The rehearsal puts one wrapper per name (C{dnf}, C{yum}, C{python3},
C{systemctl}, C{aws}) first on the PATH of the UserData script; each runs
C{python standin.py NAME ARGS...}. They are driven by environment variables
the rehearsal sets:

  - C{SNRT_ROOT}: the directory standing in for C{/} (the rehearsal rewrites
    the script's C{/etc/systemd/system}, C{/opt/sensornet},
    C{/var/lib/sensornet} to live under it).
  - C{SNRT_SITE}: C{os.pathsep}-separated site-packages directories of the
    interpreter running the tests, which every venv made here can import
    from (the namespaces have no route to a package registry).

What each does:

  - C{dnf}/C{yum}: nothing (python3 and pip are already there), logged.
  - C{python3 -m venv DIR}: a real venv made by the test's interpreter, which
    also sees C{SNRT_SITE} (a C{.pth} file) and gets the C{twistd} launcher
    pip would write when installing Twisted into it; anything else is passed
    to the test's interpreter unchanged.
  - C{systemctl daemon-reload|enable [--now] UNIT|start UNIT}: for
    C{--now}/C{start}, reads C{$SNRT_ROOT/etc/systemd/system/UNIT}, and runs
    its C{ExecStart} in the background in a new session (its own process
    group) with the unit's C{Environment}, C{EnvironmentFile} and
    C{WorkingDirectory}, stdout and stderr to C{$SNRT_ROOT/run/UNIT.out}; the
    process id goes to C{$SNRT_ROOT/run/UNIT.pid}. C{Restart=} and
    C{User=} are not emulated.
  - C{aws secretsmanager get-secret-value --secret-id ARN --query
    SecretString --output text}: prints the secret's value from the JSON
    file C{$SNRT_SECRETS} (ARN to value: what the stack generated), if ARN
    is one of C{$SNRT_READABLE} (comma-separated: the secrets this host's
    instance role may read, as the template's IAM policies say); otherwise
    fails as the aws CLI does for C{AccessDeniedException} (exit 254).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Dict, List, Tuple

_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def log(name: str, message: str) -> None:
    print(f"[rehearsal {name}] {message}", file=sys.stderr, flush=True)


def packageManager(name: str, argv: List[str]) -> int:
    log(name, "stand-in, nothing installed: " + " ".join(argv))
    return 0


def python3(argv: List[str]) -> int:
    if argv[:2] != ["-m", "venv"]:
        os.execv(sys.executable, [sys.executable, *argv])
    target = Path(argv[-1])
    subprocess.run([sys.executable, *argv], check=True)
    purelib = Path(sysconfig.get_paths(vars={"base": str(target), "platbase": str(target)})["purelib"])
    if not purelib.is_dir():
        purelib = next(target.glob("lib/python*/site-packages"))
    sites = [p for p in os.environ.get("SNRT_SITE", "").split(os.pathsep) if p]
    (purelib / "_rehearsal_parent_site.pth").write_text("".join(site + "\n" for site in sites))
    twistd = target / "bin" / "twistd"
    twistd.write_text(
        f"#!{target}/bin/python\n"
        "import sys\n"
        "from twisted.scripts.twistd import run\n"
        "sys.exit(run())\n"
    )
    twistd.chmod(0o755)
    log("python3", f"venv {target} sees {sites} and has twistd")
    return 0


def parseUnit(text: str) -> Dict[str, List[str]]:
    """
    The C{[Service]} section of a unit file: each key with every value it
    was given, in order.
    """
    section = ""
    service: Dict[str, List[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section == "Service" and "=" in line:
            key, _, value = line.partition("=")
            service.setdefault(key.strip(), []).append(value.strip())
    return service


def unitEnvironment(service: Dict[str, List[str]]) -> Dict[str, str]:
    """The variables C{Environment=} and C{EnvironmentFile=} give the service."""
    env: Dict[str, str] = {}
    for value in service.get("Environment", []):
        for assignment in shlex.split(value):
            key, _, val = assignment.partition("=")
            env[key] = val
    for value in service.get("EnvironmentFile", []):
        optional = value.startswith("-")
        path = Path(value.lstrip("-"))
        if not path.exists():
            if optional:
                continue
            raise SystemExit(f"EnvironmentFile {path} does not exist")
        for line in path.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, val = line.partition("=")
                env[key.strip()] = val.strip().strip('"').strip("'")
    return env


def execStart(service: Dict[str, List[str]], env: Dict[str, str]) -> List[str]:
    """C{ExecStart} as an argument list, with C{$VAR}/C{${VAR}} expanded as systemd does."""
    (command,) = service["ExecStart"]
    command = command.lstrip("-@:+!")

    def expand(match: re.Match[str]) -> str:
        return env.get(match.group(1) or match.group(2), "")

    return [_VARIABLE.sub(expand, word) for word in shlex.split(command)]


def start(unit: str) -> Tuple[int, Path]:
    root = Path(os.environ["SNRT_ROOT"])
    name = unit if "." in unit else unit + ".service"
    service = parseUnit((root / "etc/systemd/system" / name).read_text())
    env = {"PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
    env.update(unitEnvironment(service))
    argv = execStart(service, env)
    cwd = service.get("WorkingDirectory", ["/"])[-1]
    run = root / "run"
    run.mkdir(exist_ok=True)
    output = open(run / (name + ".out"), "ab")
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=output, stderr=output, start_new_session=True
    )
    (run / (name + ".pid")).write_text(f"{process.pid}\n")
    log("systemctl", f"started {name} as pid {process.pid}: {' '.join(argv)}")
    return process.pid, run


def systemctl(argv: List[str]) -> int:
    words = [a for a in argv if not a.startswith("-")]
    if not words:
        raise SystemExit("systemctl stand-in: no command")
    command, units = words[0], words[1:]
    if command == "daemon-reload":
        return 0
    if command == "enable":
        # Enabling only links the unit for the next boot; --now also starts it.
        if "--now" in argv:
            for unit in units:
                start(unit)
        return 0
    if command == "start":
        for unit in units:
            start(unit)
        return 0
    raise SystemExit(f"systemctl stand-in: {command!r} is not emulated")


def aws(argv: List[str]) -> int:
    """
    The one aws CLI call the templates make, against the rehearsal's
    secrets and this host's permissions.
    """
    if argv[:2] != ["secretsmanager", "get-secret-value"]:
        raise SystemExit(f"aws stand-in: {' '.join(argv[:2])!r} is not emulated")
    options: Dict[str, str] = {}
    rest = argv[2:]
    while rest:
        key = rest.pop(0)
        if not key.startswith("--") or not rest:
            raise SystemExit(f"aws stand-in: cannot read {key!r}")
        options[key[2:]] = rest.pop(0)
    if options.get("query") != "SecretString" or options.get("output") != "text":
        raise SystemExit("aws stand-in: only --query SecretString --output text is emulated")
    import json

    secretId = options.get("secret-id", "")
    readable = [a for a in os.environ.get("SNRT_READABLE", "").split(",") if a]
    if secretId not in readable:
        print(
            "An error occurred (AccessDeniedException) when calling the GetSecretValue operation: "
            f"not authorized to perform secretsmanager:GetSecretValue on resource: {secretId}",
            file=sys.stderr,
        )
        return 254
    secrets = json.loads(Path(os.environ["SNRT_SECRETS"]).read_text())
    if secretId not in secrets:
        print(f"An error occurred (ResourceNotFoundException): {secretId}", file=sys.stderr)
        return 254
    log("aws", f"GetSecretValue {secretId}")
    print(secrets[secretId])
    return 0


def main(argv: List[str]) -> int:
    name, rest = argv[0], argv[1:]
    if name in ("dnf", "yum"):
        return packageManager(name, rest)
    if name == "python3":
        return python3(rest)
    if name == "systemctl":
        return systemctl(rest)
    if name == "aws":
        return aws(rest)
    raise SystemExit(f"no stand-in for {name!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
