"""
Rehearse C{cloudformation/sensornet.yaml} for real, without AWS.

Every instance's UserData is rendered from the template itself (decoded with
C{cfnlint.decode}, Sub/Ref/GetAtt resolved by L{cfn_render} with the addresses
below) and run as root with bash inside network namespaces laid out like the
stack's VPC::

    snrt-PID-srv  10.0.1.10/24 --- 10.0.1.1  snrt-PID-rtr  10.0.2.1/24 (bridge) --- snrt-PID-c1 10.0.2.10/24
      (EC2Server)                  (the VPC router, forwarding)                  \\-- snrt-PID-c2 10.0.2.11/24

What stands in for what (see C{tests/rehearsal/standin.py}):

  - The root file system: each host gets a directory standing in for C{/};
    the script's C{/etc/systemd/system}, C{/opt/sensornet} and
    C{/var/lib/sensornet} are rewritten to live under it (a plain text
    substitution on the rendered script, checked to leave no other absolute
    path under C{/etc}, C{/opt} or C{/var} behind, so the script cannot
    touch this machine's own files).
  - C{dnf}/C{yum}: do nothing; C{python3}: the interpreter running the
    tests, whose venvs also see this interpreter's site-packages, because
    the namespaces cannot reach a package registry. The package itself is
    the wheel built from this checkout (C{PackageSpec} = the wheel's path),
    installed by the script's own C{pip install} with C{PIP_NO_INDEX=1},
    C{PIP_NO_DEPS=1} and C{PIP_IGNORE_INSTALLED=1} (so it lands in the
    script's venv even where the test interpreter has sensornet installed).
  - C{systemctl}: runs the unit's C{ExecStart} in the background in the
    host's namespace.
  - Secrets Manager: each C{AWS::SecretsManager::Secret} gets a value made
    as its C{GenerateSecretString} says and an ARN; the C{aws} stand-in
    serves a host only the secrets its instance role's policies (read from
    the template) allow.

The test passes when the server's SQLite store (read through sensornet's store API)
holds temperature readings about every 2 s from 10.0.2.10 and humidity
readings about every 3 s from 10.0.2.11, each sensor authenticated with its
own generated token, and the server refuses, from a sensor host, a reading
without a credential and a reading as the other sensor. All traffic to 10.x addresses leaves
from inside the namespaces; the test itself only reads files.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import secrets as secretsModule
import string
import shutil
import signal
from sensornet.store import StoreError
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from cfnlint import decode as cfnlint_decode  # noqa: E402

import cfn_render  # noqa: E402

CHECKOUT = Path(__file__).resolve().parent.parent
TEMPLATE = CHECKOUT / "cloudformation" / "sensornet.yaml"
STANDIN = Path(__file__).resolve().parent / "rehearsal" / "standin.py"

#: The addresses the hosts get: the server's comes from the template (its
#: fixed private IP); the sensors' would come from the subnet's DHCP.
CLIENT_ADDRESSES = {"EC2Client1": "10.0.2.10", "EC2Client2": "10.0.2.11"}

#: Paths the UserData writes to, which the rehearsal moves under a host root.
MOVED = ("/etc/systemd/system", "/opt/sensornet", "/var/lib/sensornet", "/etc/sensornet")

#: What the seed's sensors do, which the store must show.
EXPECTED = {
    "EC2Client1": {"sensor": "Sensor1", "kind": "temperature", "interval": 2.0},
    "EC2Client2": {"sensor": "Sensor2", "kind": "humidity", "interval": 3.0},
}


def loadTemplate() -> Dict[str, Any]:
    template, matches = cfnlint_decode.decode(str(TEMPLATE))
    assert not matches, [str(m) for m in matches]
    assert template is not None
    return template


def renderingTable(template: Dict[str, Any], packageSpec: str) -> Dict[str, Any]:
    """
    What each name in the template stands for in the rehearsal: parameter
    defaults, C{PackageSpec} the wheel, the server's private IP as the
    template fixes it.
    """
    values: Dict[str, Any] = dict(cfn_render.parameterDefaults(template))
    values.update(
        {
            "PackageSpec": packageSpec,
            "AWS::Region": "us-east-1",
            "AWS::StackName": "rehearsal",
            "AWS::Partition": "aws",
            "AWS::AccountId": "123456789012",
        }
    )
    server = template["Resources"]["EC2Server"]["Properties"]["NetworkInterfaces"][0]
    values["EC2Server.PrivateIp"] = cfn_render.resolve(server["PrivateIpAddress"], values)
    for name in secretResources(template):
        # What Ref gives for a secret: its ARN.
        values[name] = f"arn:aws:secretsmanager:us-east-1:123456789012:secret:rehearsal-{name}-AbCdEf"
    return values


def secretResources(template: Dict[str, Any]) -> List[str]:
    return sorted(n for n, r in template["Resources"].items() if r["Type"] == "AWS::SecretsManager::Secret")


def generateSecrets(template: Dict[str, Any], values: Dict[str, Any]) -> Dict[str, str]:
    """
    Each secret's value, as Secrets Manager makes it from
    C{GenerateSecretString} (length; letters and digits when punctuation is
    excluded), by ARN.
    """
    made = {}
    for name in secretResources(template):
        spec = template["Resources"][name]["Properties"]["GenerateSecretString"]
        assert "SecretStringTemplate" not in spec, "a sensor token is the whole secret string"
        alphabet = string.ascii_letters + string.digits
        if not spec.get("ExcludePunctuation"):
            alphabet += "!#$%&()*+,-.:;<=>?@[]^_{|}~"
        made[values[name]] = "".join(secretsModule.choice(alphabet) for _ in range(spec.get("PasswordLength", 32)))
    return made


def readableSecrets(template: Dict[str, Any], instance: str, values: Dict[str, Any]) -> List[str]:
    """
    The secrets (ARNs) C{instance}'s role may read, from the template's IAM:
    its instance profile's role's C{secretsmanager:GetSecretValue} grants.
    """
    resources = template["Resources"]
    profile = resources[instance]["Properties"].get("IamInstanceProfile")
    if profile is None:
        return []
    readable = []
    for role in resources[profile["Ref"]]["Properties"]["Roles"]:
        for policy in resources[role["Ref"]]["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
                if statement["Effect"] != "Allow" or "secretsmanager:GetSecretValue" not in actions:
                    continue
                targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
                readable.extend(cfn_render.resolve(target, values) for target in targets)
    return readable


def hostAddresses(template: Dict[str, Any], values: Dict[str, Any]) -> Dict[str, str]:
    """Each instance's address, checked to lie in the subnet the template puts it in."""
    addresses = {"EC2Server": values["EC2Server.PrivateIp"], **CLIENT_ADDRESSES}
    resources = template["Resources"]
    instances = {name for name, r in resources.items() if r["Type"] == "AWS::EC2::Instance"}
    assert instances == set(addresses), "every instance needs an address in the rehearsal"
    for name, address in addresses.items():
        subnet = resources[name]["Properties"]["NetworkInterfaces"][0]["SubnetId"]["Ref"]
        network = ipaddress.ip_network(resources[subnet]["Properties"]["CidrBlock"])
        assert ipaddress.ip_address(address) in network, (name, address, network)
    return addresses


def relocate(script: str, root: Path, scratch: Path) -> str:
    """
    The script with the paths it writes moved under C{root}; fails if it
    still names a path under /etc, /opt or /var that the rehearsal does not
    move (it would write to this machine's own files). Paths under
    C{scratch} (the test's own directory, which holds C{root} and the wheel)
    are fine wherever it is.
    """
    for prefix in MOVED:
        script = script.replace(prefix, f"{root}{prefix}")
    outside = script.replace(str(scratch), "<scratch>")
    leftovers = re.findall(r"(?<![\w/.<>-])/(?:etc|opt|var)/[\w./-]*", outside)
    assert not leftovers, f"UserData writes outside the rehearsal root: {leftovers}"
    return script


# --- the renderer, on its own -------------------------------------------------


def test_render_sub_ref_getatt_base64() -> None:
    """Sub with names, attributes, pseudo parameters and ${!literal}; Base64 on top."""
    node = {"Fn::Base64": {"Fn::Sub": "a=${A} ip=${S.PrivateIp} r=${AWS::Region} keep=${!HOME} ${Ref2}"}}
    values = {"A": "1", "S.PrivateIp": "10.0.1.10", "AWS::Region": "eu-west-1", "Ref2": "x"}
    rendered = base64.b64decode(cfn_render.resolve(node, values)).decode()
    assert rendered == "a=1 ip=10.0.1.10 r=eu-west-1 keep=${HOME} x"
    assert cfn_render.resolve({"Fn::GetAtt": ["S", "PrivateIp"]}, values) == "10.0.1.10"
    assert cfn_render.resolve({"Fn::GetAtt": "S.PrivateIp"}, values) == "10.0.1.10"
    assert cfn_render.resolve({"Fn::Sub": ["${X}-${A}", {"X": {"Ref": "Ref2"}}]}, values) == "x-1"


def test_render_refuses_what_it_cannot_do() -> None:
    """Unknown names and unsupported functions fail instead of rendering wrong."""
    with pytest.raises(cfn_render.RenderError):
        cfn_render.resolve({"Fn::Sub": "${Missing}"}, {})
    with pytest.raises(cfn_render.RenderError):
        cfn_render.resolve({"Fn::If": ["C", "a", "b"]}, {})
    with pytest.raises(cfn_render.RenderError, match="Fn::Base64"):
        cfn_render.userData({"Resources": {"I": {"Properties": {"UserData": {"Fn::Sub": "x"}}}}}, "I", {})


def test_rendered_user_data_is_the_seed_topology() -> None:
    """
    The rendered scripts start the roles the issue names: the server with
    its store and log in /var/lib/sensornet, each sensor pointed at the
    server's private address with its kind and interval.
    """
    template = loadTemplate()
    values = renderingTable(template, "sensornet")
    addresses = hostAddresses(template, values)
    assert addresses["EC2Server"] == "10.0.1.10"
    server = cfn_render.userData(template, "EC2Server", values)
    assert server.startswith("#!/bin/bash\n")
    assert "--logfile /var/lib/sensornet/log.txt" in server
    assert "--store sqlite:/var/lib/sensornet/sensornet.db" in server
    assert 'pip install "sensornet"' in server
    assert "systemctl enable --now sensornet-server.service" in server
    for name, expected in EXPECTED.items():
        script = cfn_render.userData(template, name, values)
        assert (
            f"sensornet-client --server 10.0.1.10:5000 --kind {expected['kind']}"
            f" --interval {expected['interval']:g} --sensor {expected['sensor']}"
        ) in script
        assert "WantedBy=multi-user.target" in script


def test_relocate_moves_every_write() -> None:
    """Relocation moves the known paths and refuses a script writing elsewhere."""
    scratch = Path("/var/tmp/t")
    root = scratch / "hosts/h"
    moved = relocate("install -d /var/lib/sensornet\npip install /var/tmp/t/w.whl\n", root, scratch)
    assert moved == "install -d /var/tmp/t/hosts/h/var/lib/sensornet\npip install /var/tmp/t/w.whl\n"
    with pytest.raises(AssertionError, match="outside the rehearsal root"):
        relocate("echo x > /etc/hosts\n", root, scratch)


# --- the rehearsal --------------------------------------------------------------


def _run(*argv: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")


def _namespacesAvailable() -> Tuple[bool, str]:
    if os.geteuid() != 0:
        return False, "the rehearsal needs root (network namespaces)"
    if shutil.which("ip") is None:
        return False, "the rehearsal needs iproute2's `ip netns`"
    probe = f"snrt-{os.getpid()}-probe"
    try:
        _run("ip", "netns", "add", probe)
    except (RuntimeError, OSError) as e:
        return False, f"`ip netns` is unavailable here: {e}"
    _run("ip", "netns", "del", probe)
    return True, ""


class Lab:
    """
    The VPC stand-in: a router namespace and one namespace per host, removed
    (with every process left in them) on exit.
    """

    def __init__(self, addresses: Dict[str, str]) -> None:
        prefix = f"snrt-{os.getpid()}"
        self.router = f"{prefix}-rtr"
        self.hosts = {
            name: (f"{prefix}-{'srv' if name == 'EC2Server' else 'c' + name[-1]}", address)
            for name, address in addresses.items()
        }
        self.created: List[str] = []

    def __enter__(self) -> "Lab":
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        for ns in [self.router] + [ns for ns, _ in self.hosts.values()]:
            _run("ip", "netns", "add", ns)
            self.created.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        r = self.router
        _run("ip", "netns", "exec", r, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        _run("ip", "-n", r, "link", "add", "br-client", "type", "bridge")
        gateways = {"10.0.1.0/24": "10.0.1.1", "10.0.2.0/24": "10.0.2.1"}
        _run("ip", "-n", r, "addr", "add", "10.0.2.1/24", "dev", "br-client")
        _run("ip", "-n", r, "link", "set", "br-client", "up")
        for index, (ns, address) in enumerate(self.hosts.values()):
            subnet = str(ipaddress.ip_network(f"{address}/24", strict=False))
            # Both ends are created from the router's namespace: no interface
            # ever exists in this machine's own namespace.
            port = f"r-{index}"
            _run("ip", "-n", r, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
            if subnet == "10.0.1.0/24":
                _run("ip", "-n", r, "addr", "add", "10.0.1.1/24", "dev", port)
            else:
                _run("ip", "-n", r, "link", "set", port, "master", "br-client")
            _run("ip", "-n", r, "link", "set", port, "up")
            _run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _run("ip", "-n", ns, "link", "set", "eth0", "up")
            _run("ip", "-n", ns, "route", "add", "default", "via", gateways[subnet])

    def exec(self, host: str) -> List[str]:
        """The command prefix that runs a program on C{host}."""
        return ["ip", "netns", "exec", self.hosts[host][0]]

    def __exit__(self, *exc: Any) -> None:
        for ns in reversed(self.created):
            _killNamespace(ns)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)
        self.created.clear()


def _killNamespace(ns: str) -> None:
    """Kill every process still running in C{ns} (all of them started by this test)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        result = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30)
        pids = [int(p) for p in result.stdout.split()]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and subprocess.run(
            ["ip", "netns", "pids", ns], capture_output=True, text=True, timeout=30
        ).stdout.split():
            time.sleep(0.1)


def _buildWheel(tmp: Path) -> Path:
    """A wheel of this checkout, built from a copy so the checkout stays clean."""
    source = tmp / "source"
    shutil.copytree(
        CHECKOUT,
        source,
        ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*.pyc", "*.egg-info", "build", "dist", ".venv*", "venv", ".pytest_cache",
            ".hypothesis", "test-artifacts", "*.db", "*.db-*",
        ),
    )
    out = tmp / "wheels"
    attempts = [
        # Offline when the test environment can build without isolation...
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(source)],
        # ...else pip fetches the build backend from the package index.
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source)],
    ]
    errors = []
    for argv in attempts:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
        wheels = sorted(out.glob("sensornet-*.whl"))
        if result.returncode == 0 and wheels:
            return wheels[0]
        errors.append(result.stdout[-2000:] + result.stderr[-2000:])
    raise AssertionError("could not build a wheel of the checkout:\n" + "\n".join(errors))


def _standinBin(tmp: Path) -> Path:
    bin = tmp / "standin-bin"
    bin.mkdir()
    for name in ("dnf", "yum", "python3", "systemctl", "aws"):
        wrapper = bin / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDIN}" {name} "$@"\n')
        wrapper.chmod(0o755)
    return bin


def _hostRoot(tmp: Path, host: str) -> Path:
    root = tmp / "hosts" / host
    # What the image already has.
    for directory in ("etc/systemd/system", "opt", "var/lib", "run"):
        (root / directory).mkdir(parents=True)
    return root


def _parentSite() -> str:
    paths = sysconfig.get_paths()
    return os.pathsep.join(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _launch(
    lab: Lab, host: str, script: Path, root: Path, bin: Path, secrets: Path, readable: List[str]
) -> "subprocess.Popen[bytes]":
    env = {
        "SNRT_SECRETS": str(secrets),
        "SNRT_READABLE": ",".join(readable),
        "PATH": f"{bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(root),
        "LANG": "C.UTF-8",
        "SNRT_ROOT": str(root),
        "SNRT_SITE": _parentSite(),
        "PIP_NO_INDEX": "1",
        # The test interpreter may have sensornet installed already (CI
        # installs it): install the wheel into the script's venv anyway,
        # alone, its dependencies coming from the parent's site-packages.
        "PIP_IGNORE_INSTALLED": "1",
        "PIP_NO_DEPS": "1",
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "PIP_NO_CACHE_DIR": "1",
    }
    log = open(root / "cloud-init-output.log", "wb")
    return subprocess.Popen(
        lab.exec(host) + ["bash", str(script)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _finish(process: "subprocess.Popen[bytes]", host: str, root: Path, timeout: float) -> None:
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        code = None
    output = (root / "cloud-init-output.log").read_text(errors="replace")
    assert code == 0, f"{host}'s UserData ended with {code}:\n{output[-6000:]}"


def _readings(database: Path) -> List[Dict[str, Any]]:
    if not database.exists():
        return []
    from sensornet.store.sqlite import SQLiteStore

    store = SQLiteStore(str(database))
    try:
        store.open()
        rows = store.readings(limit=10**7)
    except StoreError:
        return []  # not created yet
    finally:
        store.close()
    return sorted(rows, key=lambda r: (r["sensor"], r["seq"] if r["seq"] is not None else -1))


def _enough(rows: List[Dict[str, Any]], count: int = 6) -> bool:
    for expected in EXPECTED.values():
        mine = [r for r in rows if r["sensor"] == expected["sensor"]]
        if len(mine) < count or mine[-1]["ts"] - mine[0]["ts"] < 10:
            return False
    return True


def _diagnostics(roots: Dict[str, Path]) -> str:
    parts = []
    for host, root in roots.items():
        for path in sorted((root / "run").glob("*.out")) + sorted((root / "var/lib/sensornet").glob("*.txt")) + sorted(
            (root / "var/lib/sensornet").glob("*.log")
        ):
            parts.append(f"--- {host}: {path.name}\n{path.read_text(errors='replace')[-3000:]}")
    return "\n".join(parts)


def _deadServices(roots: Dict[str, Path]) -> List[str]:
    """The units the systemctl stand-in started whose process has ended."""
    dead = []
    for host, root in roots.items():
        for pidfile in (root / "run").glob("*.pid"):
            pid = int(pidfile.read_text())
            try:
                os.kill(pid, 0)
                # A zombie (exited, not yet reaped by its parent) counts as dead.
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                    dead.append(f"{host}/{pidfile.stem}")
            except (ProcessLookupError, FileNotFoundError):
                dead.append(f"{host}/{pidfile.stem}")
    return dead


def _units(rows: List[Dict[str, Any]]) -> Iterator[Tuple[str, Dict[str, Any], List[Dict[str, Any]]]]:
    for host, expected in EXPECTED.items():
        yield host, expected, [r for r in rows if r["sensor"] == expected["sensor"]]


# Run inside a sensor host's namespace: what an impersonator on that host gets
# from the server, without a credential and with this host's token.
_PROBE = r"""
import socket, sys
server, token, other = sys.argv[1], sys.argv[2], sys.argv[3]
replies = []
for first in (None, token):
    s = socket.create_connection((server, 5000), timeout=10)
    data = (b"auth " + first.encode() + b"\n" if first else b"") + other.encode() + b" - Umidade: 1%\n"
    s.sendall(data)
    received = b""
    s.settimeout(10)
    while received.count(b"\n") < (2 if first else 1):
        chunk = s.recv(4096)
        if not chunk:
            break
        received += chunk
    s.close()
    replies.append(received.decode("utf-8", "replace"))
print(repr(replies))
"""


def _probeImpersonation(lab: Lab, roots: Dict[str, Path], values: Dict[str, Any]) -> List[str]:
    """
    From the first sensor's host: a seed-text reading as Sensor2 without a
    credential, then the same after authenticating with Sensor1's own
    token (read from that host's token file): the server's replies.
    """
    token = (roots["EC2Client1"] / "etc/sensornet/token").read_text().strip()
    result = subprocess.run(
        lab.exec("EC2Client1") + [sys.executable, "-c", _PROBE, values["EC2Server.PrivateIp"], token, "Sensor2"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    import ast

    return ast.literal_eval(result.stdout.strip())


@pytest.mark.timeout(420)
def test_rehearsal_in_network_namespaces(tmp_path: Path) -> None:
    """
    The three instances' UserData, run for real in namespaces shaped like
    the VPC, make a server whose SQLite store fills with the seed's
    readings: temperature about every 2 s from the first sensor host,
    humidity about every 3 s from the second.
    """
    available, reason = _namespacesAvailable()
    if not available:
        pytest.skip(reason)

    template = loadTemplate()
    wheel = _buildWheel(tmp_path)
    values = renderingTable(template, str(wheel))
    addresses = hostAddresses(template, values)
    bin = _standinBin(tmp_path)
    roots = {host: _hostRoot(tmp_path, host) for host in addresses}
    scripts = {}
    for host, root in roots.items():
        script = relocate(cfn_render.userData(template, host, values), root, tmp_path)
        scripts[host] = root / "user-data.sh"
        scripts[host].write_text(script)
    database = roots["EC2Server"] / "var/lib/sensornet/sensornet.db"
    # What Secrets Manager holds: the stack's generated tokens, readable by
    # this test only (and each host through the aws stand-in, as its role
    # allows).
    secretsFile = tmp_path / "secrets.json"
    secretsFile.write_text(json.dumps(generateSecrets(template, values)))
    secretsFile.chmod(0o600)
    readable = {host: readableSecrets(template, host, values) for host in addresses}

    with Lab(addresses) as lab:
        try:
            # The server first, as CloudFormation does (the sensors' UserData
            # names its address); the sensors cope with it being late anyway.
            server = _launch(
                lab, "EC2Server", scripts["EC2Server"], roots["EC2Server"], bin, secretsFile, readable["EC2Server"]
            )
            _finish(server, "EC2Server", roots["EC2Server"], timeout=180)
            clients = {
                h: _launch(lab, h, scripts[h], roots[h], bin, secretsFile, readable[h]) for h in EXPECTED
            }
            for host, process in clients.items():
                _finish(process, host, roots[host], timeout=180)

            deadline = time.monotonic() + 90
            rows = _readings(database)
            while not _enough(rows) and time.monotonic() < deadline and not _deadServices(roots):
                time.sleep(1)
                rows = _readings(database)
            dead = _deadServices(roots)
            probes = _probeImpersonation(lab, roots, values)
        finally:
            report = _diagnostics(roots)

    # The package came from the wheel, into the venv the UserData made.
    venv = roots["EC2Server"] / "opt/sensornet"
    installed = list(venv.glob("lib/python*/site-packages/twisted/plugins/sensornet_plugins.py"))
    assert installed, "the wheel was not installed into /opt/sensornet\n" + report
    serverLog = roots["EC2Server"] / "var/lib/sensornet/log.txt"
    assert serverLog.exists() and serverLog.stat().st_size > 0, "the server wrote no log.txt\n" + report

    assert not dead, f"services exited: {dead}\n{report}"
    # Authenticated, and only so: the server takes no anonymous readings,
    # each sensor wrote with its own token, and from a sensor's host neither
    # no credential nor its own token writes as the other sensor.
    log = serverLog.read_text(errors="replace")
    assert "Anonymous sensor writes accepted from: none" in log, report
    assert probes == [
        "error auth: refused\n",
        "ok auth Sensor1\nerror: not authorized to write as Sensor2\n",
    ], probes
    for host, root in roots.items():
        boot = (root / "cloud-init-output.log").read_text(errors="replace")
        tokens = json.loads(secretsFile.read_text()).values()
        assert not any(token in boot for token in tokens), f"a token in {host}'s boot log"
    assert not any(token in log for token in json.loads(secretsFile.read_text()).values()), "a token in log.txt"
    for host in EXPECTED:
        other = [arn for arn in json.loads(secretsFile.read_text()) if arn not in readable[host]]
        assert len(readable[host]) == 1 and len(other) == 1, (host, readable[host])
    assert _enough(rows), f"too few readings after 90 s: {[(r['sensor'], r['seq']) for r in rows]}\n{report}"
    for host, expected, mine in _units(rows):
        assert {r["kind"] for r in mine} == {expected["kind"]}
        peers = {r["peer"].rsplit(":", 1)[0] for r in mine}
        assert peers == {CLIENT_ADDRESSES[host]}, (expected["sensor"], peers)
        interval = expected["interval"]
        # The sensor's own clock: one reading per interval, none lost.
        seqs = [r["seq"] for r in mine]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
        gaps = [b["ts"] - a["ts"] for a, b in zip(mine, mine[1:])]
        assert all(abs(g - interval) < 0.5 for g in gaps), (expected["sensor"], gaps)
        # The server's clock: once connected, readings arrive at that pace.
        arrivals = [b["received_at"] - a["received_at"] for a, b in zip(mine[2:], mine[3:])]
        assert abs(statistics.median(arrivals) - interval) < 0.5, (expected["sensor"], arrivals)
