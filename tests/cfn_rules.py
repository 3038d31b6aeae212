"""
Project rules for our CloudFormation templates: mistakes cfn-lint does not
report, each a pure function of the decoded template (a dict, as
C{cfnlint.decode} or C{yaml.safe_load} of JSON-style templates returns it).

Every rule returns a list of problems, one line each, naming where the problem
is (C{Resources/DefaultRoute: ...}); an empty list means the template passes.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, Iterator, List, Mapping, Sequence, Tuple

__all__ = [
    "defaultRouteDependsOnAttachment",
    "sshClosedToWorld",
    "noHardCodedAmi",
    "userDataBase64",
    "RULES",
    "check",
]

Template = Mapping[str, Any]
Rule = Callable[[Template], List[str]]


def _resources(template: Template) -> Iterator[Tuple[str, Mapping[str, Any]]]:
    for name, resource in (template.get("Resources") or {}).items():
        if isinstance(resource, Mapping):
            yield name, resource


def _properties(resource: Mapping[str, Any]) -> Mapping[str, Any]:
    properties = resource.get("Properties") or {}
    return properties if isinstance(properties, Mapping) else {}


def _dependsOn(resource: Mapping[str, Any]) -> List[str]:
    depends = resource.get("DependsOn", [])
    return [depends] if isinstance(depends, str) else list(depends)


def _refName(value: Any) -> Any:
    """The name a C{Ref} points at, or L{None} if C{value} is not a Ref."""
    if isinstance(value, Mapping) and list(value) == ["Ref"]:
        return value["Ref"]
    return None


def _walk(node: Any, path: str) -> Iterator[Tuple[str, str, Any]]:
    """Every (path, key, value) below C{node}, depth first."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}/{index}")


def _possibleValues(value: Any, template: Template) -> List[Any]:
    """
    The literal values C{value} may take when the stack is created with
    default parameters: a literal itself, a parameter's default through
    C{Ref}, each branch of C{Fn::If}.
    """
    name = _refName(value)
    if name is not None:
        parameter = (template.get("Parameters") or {}).get(name)
        if isinstance(parameter, Mapping) and "Default" in parameter:
            return [parameter["Default"]]
        return []
    if isinstance(value, Mapping) and list(value) == ["Fn::If"]:
        branches = value["Fn::If"]
        if isinstance(branches, list) and len(branches) == 3:
            return _possibleValues(branches[1], template) + _possibleValues(branches[2], template)
        return []
    if isinstance(value, Mapping):
        return []
    return [value]


def defaultRouteDependsOnAttachment(template: Template) -> List[str]:
    """
    A route through an internet gateway must C{DependsOn} the gateway's
    C{AWS::EC2::VPCGatewayAttachment}: CloudFormation may otherwise create the
    route first, and the route fails because the gateway is not attached to
    the VPC yet (nothing in the route's properties orders the two).
    """
    resources = dict(_resources(template))
    attachments: dict = {}
    for name, resource in resources.items():
        if resource.get("Type") == "AWS::EC2::VPCGatewayAttachment":
            gateway = _refName(_properties(resource).get("InternetGatewayId"))
            attachments.setdefault(gateway, []).append(name)
    problems = []
    for name, resource in resources.items():
        if resource.get("Type") != "AWS::EC2::Route":
            continue
        gateway = _refName(_properties(resource).get("GatewayId"))
        if gateway is None or resources.get(gateway, {}).get("Type") != "AWS::EC2::InternetGateway":
            continue
        needed = attachments.get(gateway, [])
        if not set(needed) & set(_dependsOn(resource)):
            problems.append(
                f"Resources/{name}: route through {gateway} has no DependsOn on its gateway attachment"
                f" ({', '.join(needed) or 'none declared'})"
            )
    return problems


def _coversSsh(rule: Mapping[str, Any], template: Template) -> bool:
    protocols = {str(p).lower() for p in _possibleValues(rule.get("IpProtocol"), template)}
    if protocols & {"-1", "all"}:
        return True
    if not protocols & {"tcp", "6"}:
        return False
    for low in _possibleValues(rule.get("FromPort"), template):
        for high in _possibleValues(rule.get("ToPort"), template):
            try:
                if int(low) == -1 or int(low) <= 22 <= int(high):
                    return True
            except (TypeError, ValueError):
                return True
    return False


def _isWorld(cidr: Any) -> bool:
    try:
        return ipaddress.ip_network(str(cidr), strict=False).prefixlen == 0
    except ValueError:
        return False


def _ingressRules(template: Template) -> Iterator[Tuple[str, Mapping[str, Any]]]:
    for name, resource in _resources(template):
        kind = resource.get("Type")
        properties = _properties(resource)
        if kind == "AWS::EC2::SecurityGroup":
            for index, rule in enumerate(properties.get("SecurityGroupIngress") or []):
                if isinstance(rule, Mapping):
                    yield f"Resources/{name}/SecurityGroupIngress/{index}", rule
        elif kind == "AWS::EC2::SecurityGroupIngress":
            yield f"Resources/{name}", properties


def sshClosedToWorld(template: Template) -> List[str]:
    """
    No ingress rule admits port 22 from everywhere (C{0.0.0.0/0} or
    C{::/0}), whether written literally, as the default of the parameter the
    rule refers to, or in either branch of an C{Fn::If}.
    """
    problems = []
    for where, rule in _ingressRules(template):
        if not _coversSsh(rule, template):
            continue
        for key in ("CidrIp", "CidrIpv6"):
            for cidr in _possibleValues(rule.get(key), template):
                if _isWorld(cidr):
                    problems.append(f"{where}: port 22 open to {cidr}")
    return problems


def noHardCodedAmi(template: Template) -> List[str]:
    """
    No C{ImageId} names a fixed image: image ids differ by region and go
    stale. Images come from a public SSM parameter instead. Caught: a literal
    C{ami-...}, a C{Ref} to a parameter whose default is one, and
    C{Fn::FindInMap} (a region-to-image table is hard-coding by another name).
    """
    problems = []
    for name, resource in _resources(template):
        for path, key, value in _walk(_properties(resource), f"Resources/{name}"):
            if key != "ImageId":
                continue
            if isinstance(value, Mapping) and "Fn::FindInMap" in value:
                problems.append(f"{path}/ImageId: image id looked up in a mapping")
                continue
            for literal in _possibleValues(value, template):
                if isinstance(literal, str) and literal.startswith("ami-"):
                    problems.append(f"{path}/ImageId: hard-coded image id {literal}")
    return problems


def userDataBase64(template: Template) -> List[str]:
    """
    Every C{UserData} is wrapped in C{Fn::Base64}: EC2 takes user data
    base64-encoded, and plain text fails the launch (or, in a launch template,
    is silently garbled).
    """
    problems = []
    for name, resource in _resources(template):
        for path, key, value in _walk(_properties(resource), f"Resources/{name}"):
            if key == "UserData" and not (isinstance(value, Mapping) and list(value) == ["Fn::Base64"]):
                problems.append(f"{path}/UserData: not wrapped in Fn::Base64")
    return problems


RULES: Sequence[Rule] = (
    defaultRouteDependsOnAttachment,
    sshClosedToWorld,
    noHardCodedAmi,
    userDataBase64,
)


def check(template: Template) -> List[str]:
    """Every problem every rule finds in C{template}."""
    return [problem for rule in RULES for problem in rule(template)]
