"""
Static checks of the CloudFormation templates in C{cloudformation/}: cfn-lint
finds nothing (no error, no warning), the project rules in L{cfn_rules} find
nothing, and checkov passes with every skipped check justified in the
template's metadata. Each project rule is also shown to catch the mistake it
exists for, on a copy of our own template with that mistake put in.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest

from cfnlint import api as cfnlint_api  # noqa: E402
from cfnlint import decode as cfnlint_decode  # noqa: E402

import cfn_rules  # noqa: E402

CLOUDFORMATION = Path(__file__).resolve().parent.parent / "cloudformation"
TEMPLATES = ["sensornet.yaml", "sensornet-scaled.yaml"]


def load(name: str) -> Dict[str, Any]:
    """Decode a template the way cfn-lint does, failing on any parse error."""
    template, matches = cfnlint_decode.decode(str(CLOUDFORMATION / name))
    assert not matches, [str(m) for m in matches]
    assert template is not None
    return template


# --- cfn-lint ---------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATES)
def test_cfnlint_reports_nothing(name: str) -> None:
    """cfn-lint, with its default rules, reports no error and no warning."""
    matches = cfnlint_api.lint_file(CLOUDFORMATION / name)
    assert [str(m) for m in matches] == []


def test_cfnlint_is_listening(tmp_path: Path) -> None:
    """
    The lint call above can fail: the same call on our template with a typo
    in a resource type reports it.
    """
    broken = tmp_path / "broken.yaml"
    text = (CLOUDFORMATION / "sensornet.yaml").read_text()
    broken.write_text(text.replace("Type: AWS::EC2::RouteTable", "Type: AWS::EC2::RoutTable", 1))
    assert cfnlint_api.lint_file(broken)


# --- project rules ------------------------------------------------------------


@pytest.mark.parametrize("name", TEMPLATES)
@pytest.mark.parametrize("rule", cfn_rules.RULES, ids=lambda rule: rule.__name__)
def test_project_rule_passes_our_template(name: str, rule: Callable[[Any], List[str]]) -> None:
    """Every project rule finds nothing in our templates."""
    assert rule(load(name)) == []


def _broken(name: str, breaker: Callable[[Dict[str, Any]], None]) -> Dict[str, Any]:
    template = copy.deepcopy(load(name))
    breaker(template)
    return template


@pytest.mark.parametrize("name", TEMPLATES)
def test_rule_catches_default_route_without_depends_on(name: str) -> None:
    """The default route of our template, with its DependsOn removed, is caught."""

    def breaker(template: Dict[str, Any]) -> None:
        del template["Resources"]["DefaultRoute"]["DependsOn"]

    problems = cfn_rules.defaultRouteDependsOnAttachment(_broken(name, breaker))
    assert len(problems) == 1 and "DefaultRoute" in problems[0]


def test_rule_catches_depends_on_something_else() -> None:
    """A DependsOn that does not name the gateway's attachment does not count."""
    template = {
        "Resources": {
            "Gw": {"Type": "AWS::EC2::InternetGateway"},
            "Attach": {"Type": "AWS::EC2::VPCGatewayAttachment", "Properties": {"InternetGatewayId": {"Ref": "Gw"}}},
            "Rt": {"Type": "AWS::EC2::RouteTable"},
            "Route": {
                "Type": "AWS::EC2::Route",
                "DependsOn": ["Rt"],
                "Properties": {"DestinationCidrBlock": "0.0.0.0/0", "GatewayId": {"Ref": "Gw"}},
            },
        }
    }
    assert cfn_rules.defaultRouteDependsOnAttachment(template) == [
        "Resources/Route: route through Gw has no DependsOn on its gateway attachment (Attach)"
    ]
    template["Resources"]["Route"]["DependsOn"] = ["Rt", "Attach"]
    assert cfn_rules.defaultRouteDependsOnAttachment(template) == []


@pytest.mark.parametrize("name", TEMPLATES)
def test_rule_catches_ssh_open_through_parameter_default(name: str) -> None:
    """Our SshCidr parameter defaulting to 0.0.0.0/0 is caught (through the Ref)."""

    def breaker(template: Dict[str, Any]) -> None:
        template["Parameters"]["SshCidr"]["Default"] = "0.0.0.0/0"

    problems = cfn_rules.sshClosedToWorld(_broken(name, breaker))
    assert problems == ["Resources/SshIngress: port 22 open to 0.0.0.0/0"]


@pytest.mark.parametrize(
    "rule, opened",
    [
        ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "0.0.0.0/0"}, True),
        ({"IpProtocol": "tcp", "FromPort": 0, "ToPort": 1024, "CidrIp": "0.0.0.0/0"}, True),
        ({"IpProtocol": "-1", "CidrIp": "0.0.0.0/0"}, True),
        ({"IpProtocol": "6", "FromPort": "22", "ToPort": "22", "CidrIpv6": "::/0"}, True),
        ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": {"Fn::If": ["C", "10.0.0.0/8", "0.0.0.0/0"]}},
         True),
        ({"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "CidrIp": "203.0.113.7/32"}, False),
        ({"IpProtocol": "tcp", "FromPort": 5000, "ToPort": 5000, "CidrIp": "0.0.0.0/0"}, False),
        ({"IpProtocol": "udp", "FromPort": 22, "ToPort": 22, "CidrIp": "0.0.0.0/0"}, False),
    ],
)
def test_rule_ssh_inline_rules(rule: Dict[str, Any], opened: bool) -> None:
    """Inline security group rules: port 22 (or all ports) from anywhere, IPv4 or IPv6, is caught."""
    template = {
        "Resources": {"Sg": {"Type": "AWS::EC2::SecurityGroup", "Properties": {"SecurityGroupIngress": [rule]}}}
    }
    assert bool(cfn_rules.sshClosedToWorld(template)) is opened


@pytest.mark.parametrize(
    "name, holder", [("sensornet.yaml", "EC2Server"), ("sensornet-scaled.yaml", "ServerLaunchTemplate")]
)
def test_rule_catches_hard_coded_ami(name: str, holder: str) -> None:
    """Our image parameter replaced by a literal image id is caught, wherever the ImageId sits."""

    def breaker(template: Dict[str, Any]) -> None:
        properties = template["Resources"][holder]["Properties"]
        # Not properties.get(key, default): cfn-lint's nodes copy a dict default.
        target = properties["LaunchTemplateData"] if "LaunchTemplateData" in properties else properties
        target["ImageId"] = "ami-0123456789abcdef0"

    problems = cfn_rules.noHardCodedAmi(_broken(name, breaker))
    assert len(problems) == 1 and "ami-0123456789abcdef0" in problems[0]


def test_rule_catches_ami_through_parameter_or_mapping() -> None:
    """A String parameter defaulting to an image id, or a region mapping, is hard-coding too."""
    template: Dict[str, Any] = {
        "Parameters": {"Ami": {"Type": "String", "Default": "ami-0abc"}},
        "Mappings": {"Images": {"us-east-1": {"Id": "ami-0def"}}},
        "Resources": {
            "A": {"Type": "AWS::EC2::Instance", "Properties": {"ImageId": {"Ref": "Ami"}}},
            "B": {
                "Type": "AWS::EC2::Instance",
                "Properties": {"ImageId": {"Fn::FindInMap": ["Images", {"Ref": "AWS::Region"}, "Id"]}},
            },
        },
    }
    assert len(cfn_rules.noHardCodedAmi(template)) == 2


@pytest.mark.parametrize(
    "name, holder", [("sensornet.yaml", "EC2Client1"), ("sensornet-scaled.yaml", "ServerLaunchTemplate")]
)
def test_rule_catches_user_data_not_base64(name: str, holder: str) -> None:
    """Our UserData with its Fn::Base64 unwrapped is caught."""

    def breaker(template: Dict[str, Any]) -> None:
        properties = template["Resources"][holder]["Properties"]
        # Not properties.get(key, default): cfn-lint's nodes copy a dict default.
        target = properties["LaunchTemplateData"] if "LaunchTemplateData" in properties else properties
        target["UserData"] = target["UserData"]["Fn::Base64"]

    problems = cfn_rules.userDataBase64(_broken(name, breaker))
    assert len(problems) == 1 and "UserData: not wrapped in Fn::Base64" in problems[0]


@pytest.mark.parametrize("name", TEMPLATES)
def test_check_runs_every_rule(name: str) -> None:
    """L{cfn_rules.check} reports the problems of all rules at once."""

    def breaker(template: Dict[str, Any]) -> None:
        del template["Resources"]["DefaultRoute"]["DependsOn"]
        template["Parameters"]["SshCidr"]["Default"] = "::/0"

    assert len(cfn_rules.check(_broken(name, breaker))) == 2
    assert cfn_rules.check(load(name)) == []


# --- what the issue asks of the templates, beyond lint ------------------------


def test_seed_topology() -> None:
    """sensornet.yaml has the seed's network, addresses and roles."""
    template = load("sensornet.yaml")
    resources = template["Resources"]
    assert resources["VPC"]["Properties"]["CidrBlock"] == "10.0.0.0/16"
    assert resources["VPC"]["Properties"]["EnableDnsSupport"] is True
    assert resources["VPC"]["Properties"]["EnableDnsHostnames"] is True
    assert resources["SubnetServer"]["Properties"]["CidrBlock"] == "10.0.1.0/24"
    assert resources["SubnetClient"]["Properties"]["CidrBlock"] == "10.0.2.0/24"
    parameters = template["Parameters"]
    assert parameters["LatestAmiId"]["Type"] == "AWS::SSM::Parameter::Value<AWS::EC2::Image::Id>"
    assert parameters["LatestAmiId"]["Default"].startswith("/aws/service/ami-amazon-linux-latest/al2023-")
    assert parameters["KeyName"]["Type"] == "AWS::EC2::KeyPair::KeyName"
    assert parameters["InstanceType"]["Default"] == "t3.micro"
    assert "t2.micro" in parameters["InstanceType"]["AllowedValues"]
    assert parameters["ServerPrivateIp"]["Default"] == "10.0.1.10"
    for name in ("DashboardCidr", "SshCidr"):
        assert parameters[name]["Default"] == ""
    assert {"ServerPublicIp", "ServerPublicDnsName", "DashboardUrl", "SshCommand", "LogPath"} <= set(
        template["Outputs"]
    )


@pytest.mark.parametrize("name", TEMPLATES)
def test_imdsv2_and_encrypted_volumes(name: str) -> None:
    """Every launch template requires IMDSv2 and encrypts its volumes."""
    launchTemplates = [
        r["Properties"]["LaunchTemplateData"]
        for r in load(name)["Resources"].values()
        if r["Type"] == "AWS::EC2::LaunchTemplate"
    ]
    assert launchTemplates
    for data in launchTemplates:
        assert data["MetadataOptions"]["HttpTokens"] == "required"
        assert all(m["Ebs"]["Encrypted"] is True for m in data["BlockDeviceMappings"])


def test_every_instance_uses_the_hardened_launch_template() -> None:
    """The three instances of sensornet.yaml all take their settings from the IMDSv2 launch template."""
    resources = load("sensornet.yaml")["Resources"]
    instances = [name for name, r in resources.items() if r["Type"] == "AWS::EC2::Instance"]
    assert sorted(instances) == ["EC2Client1", "EC2Client2", "EC2Server"]
    for name in instances:
        assert resources[name]["Properties"]["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "InstanceDefaults"}


def test_scaled_secret_stays_secret() -> None:
    """
    The scaled stack's database password is generated in Secrets Manager,
    read by the servers at boot, readable by their role for that one secret
    only, and appears in no output.
    """
    template = load("sensornet-scaled.yaml")
    resources = template["Resources"]
    assert "GenerateSecretString" in resources["DatabaseSecret"]["Properties"]
    database = resources["Database"]["Properties"]
    assert database["StorageEncrypted"] is True and database["PubliclyAccessible"] is False
    assert database["MultiAZ"] == {"Ref": "DatabaseMultiAZ"}
    assert "{{resolve:secretsmanager:" in database["MasterUserPassword"]["Fn::Sub"]
    statements = [
        statement
        for policy in resources["ServerRole"]["Properties"]["Policies"]
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    assert statements == [
        {"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": {"Ref": "DatabaseSecret"}}
    ]
    script = resources["ServerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "secretsmanager get-secret-value" in script and "--store env:SENSORNET_STORE" in script
    assert "EnvironmentFile=/etc/sensornet/server.env" in script
    outputs = json.dumps(template["Outputs"])
    assert "resolve:secretsmanager" not in outputs and "SecretString" not in outputs
    ingress = resources["DatabaseSecurityGroup"]["Properties"]["SecurityGroupIngress"]
    assert ingress == [
        {
            "Description": "PostgreSQL from the servers",
            "IpProtocol": "tcp",
            "FromPort": 5432,
            "ToPort": 5432,
            "SourceSecurityGroupId": {"Ref": "ServerSecurityGroup"},
        }
    ]


def test_scaled_load_balancer() -> None:
    """A network load balancer over two AZs, TCP health checks on the sensor port, an ASG behind it."""
    resources = load("sensornet-scaled.yaml")["Resources"]
    balancer = resources["LoadBalancer"]["Properties"]
    assert balancer["Type"] == "network" and len(balancer["Subnets"]) == 2
    zones = {
        resources[subnet["Ref"]]["Properties"]["AvailabilityZone"]["Fn::Select"][0] for subnet in balancer["Subnets"]
    }
    assert zones == {0, 1}
    sensors = resources["SensorTargetGroup"]["Properties"]
    assert (sensors["Protocol"], sensors["Port"], sensors["HealthCheckProtocol"]) == ("TCP", 5000, "TCP")
    group = resources["ServerGroup"]["Properties"]
    assert group["LaunchTemplate"]["LaunchTemplateId"] == {"Ref": "ServerLaunchTemplate"}
    assert {"Ref": "SensorTargetGroup"} in group["TargetGroupARNs"]


# --- checkov ------------------------------------------------------------------


def _checkov() -> Optional[str]:
    """
    Where checkov is: $CHECKOV, else on PATH, else next to this Python.
    checkov pins packaging<24, which pytest 9 cannot use, so it usually lives
    in a virtualenv of its own.
    """
    for candidate in (os.environ.get("CHECKOV"), shutil.which("checkov"), str(Path(sys.executable).parent / "checkov")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def _skipsInMetadata(template: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    skips = {}
    for name, resource in template["Resources"].items():
        found = ((resource.get("Metadata") or {}).get("checkov") or {}).get("skip") or []
        if found:
            skips[name] = list(found)
    return skips


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_checkov_skip_is_justified(name: str) -> None:
    """Each check skipped in a template's metadata says why, in a sentence."""
    for resource, skips in _skipsInMetadata(load(name)).items():
        for skip in skips:
            assert skip["id"].startswith(("CKV_AWS_", "CKV2_AWS_")), (resource, skip)
            assert len(str(skip.get("comment", "")).split()) >= 8, (resource, skip)


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", TEMPLATES)
def test_checkov_passes(name: str) -> None:
    """
    checkov finds no failed check, and every skip in the metadata is one
    checkov actually applied (no stale justifications).
    """
    checkov = _checkov()
    if checkov is None:
        # tests/run.sh installs it; a run that quietly skipped it would prove nothing.
        pytest.fail("checkov not found: install it (in its own venv) and set CHECKOV=/path/to/bin/checkov")
    result = subprocess.run(
        [checkov, "--file", str(CLOUDFORMATION / name), "--skip-download", "--output", "json"],
        capture_output=True,
        text=True,
        timeout=540,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        (check["check_id"], check["resource"])
        for report in reports
        for check in report.get("results", {}).get("failed_checks", [])
    ]
    assert failed == [], result.stdout[-4000:]
    assert any(report.get("check_type") == "cloudformation" for report in reports)
    applied = {
        (check["check_id"], check["resource"].split(".", 1)[-1])
        for report in reports
        for check in report.get("results", {}).get("skipped_checks", [])
    }
    declared = {(skip["id"], resource) for resource, skips in _skipsInMetadata(load(name)).items() for skip in skips}
    assert declared == applied


# --- per-sensor credentials (issue 10, item 6) ------------------------------------


def _secretReads(resources: Dict[str, Any], role: str) -> List[Any]:
    """The resources a role may GetSecretValue, as written in the template."""
    granted: List[Any] = []
    for policy in resources[role]["Properties"].get("Policies", []):
        for statement in policy["PolicyDocument"]["Statement"]:
            if statement["Action"] == "secretsmanager:GetSecretValue" and statement["Effect"] == "Allow":
                resource = statement["Resource"]
                granted.extend(resource if isinstance(resource, list) else [resource])
    return granted


def test_each_sensor_instance_has_its_own_generated_credential() -> None:
    """
    sensornet.yaml: one secret per sensor instance, generated by Secrets
    Manager (no token in the template); each sensor's role reads its own
    secret and nothing else, the server's reads both (to register them);
    no output names a secret's value; the server takes no anonymous
    readings, registers each token by import, and each sensor runs with
    its token file.
    """
    template = load("sensornet.yaml")
    resources = template["Resources"]
    secrets = {"EC2Client1": "Sensor1Secret", "EC2Client2": "Sensor2Secret"}
    for secret in secrets.values():
        generated = resources[secret]["Properties"]["GenerateSecretString"]
        assert generated["PasswordLength"] >= 32 and generated["ExcludePunctuation"] is True
        assert "SecretString" not in resources[secret]["Properties"]
    profiles = {name: resources[name]["Properties"]["IamInstanceProfile"]["Ref"] for name in ("EC2Server", *secrets)}
    roles = {name: resources[profile]["Properties"]["Roles"][0]["Ref"] for name, profile in profiles.items()}
    assert len(set(roles.values())) == 3, "one role per instance"
    for instance, secret in secrets.items():
        assert _secretReads(resources, roles[instance]) == [{"Ref": secret}]
    assert sorted(r["Ref"] for r in _secretReads(resources, roles["EC2Server"])) == sorted(secrets.values())
    assert "IamInstanceProfile" not in resources["InstanceDefaults"]["Properties"]["LaunchTemplateData"]
    outputs = json.dumps(template["Outputs"])
    assert "Secret" not in outputs and "resolve:secretsmanager" not in outputs
    server = resources["EC2Server"]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "--anonymous-from none" in server
    assert server.count("--import-token-file") == 1 and "register Sensor1 ${Sensor1Secret}" in server
    assert "register Sensor2 ${Sensor2Secret}" in server
    for instance, secret in secrets.items():
        script = resources[instance]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
        assert f"--secret-id ${{{secret}}}" in script and "--token-file /etc/sensornet/token" in script
        assert "umask 077" in script
        other = ({"Sensor1Secret", "Sensor2Secret"} - {secret}).pop()
        assert other not in script
    for script in [resources[name]["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"] for name in profiles]:
        # Tracing (-x) would copy the tokens into the boot log.
        assert "set -euo pipefail" in script and "set -euxo" not in script


def test_scaled_servers_take_no_anonymous_readings() -> None:
    """The scaled stack's servers require every sensor to authenticate."""
    resources = load("sensornet-scaled.yaml")["Resources"]
    script = resources["ServerLaunchTemplate"]["Properties"]["LaunchTemplateData"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "--anonymous-from none" in script
