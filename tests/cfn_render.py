"""
Render parts of a decoded CloudFormation template the way CloudFormation
would, from a table of values standing in for what only AWS knows.

The rehearsal uses this to turn each instance's C{UserData} into the exact
script cloud-init would run. Only the intrinsic functions our templates use in
values that reach an instance are supported (C{Ref}, C{Fn::GetAtt}, C{Fn::Sub},
C{Fn::Base64}, C{Fn::Join}, C{Fn::Select}); anything else raises
L{RenderError}, so a template change the rehearsal cannot follow fails loudly
instead of being rendered wrong.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Mapping

__all__ = ["RenderError", "resolve", "userData", "parameterDefaults"]

# ${Name}, ${Resource.Attribute}, ${AWS::Region}; ${!Literal} stays literal.
_SUB_VARIABLE = re.compile(r"\$\{([^}]*)\}")


class RenderError(ValueError):
    """
    A value could not be rendered: an unknown name or an intrinsic function
    this renderer does not implement.
    """


def parameterDefaults(template: Mapping[str, Any]) -> dict[str, str]:
    """
    Each parameter's default as CloudFormation would pass it (as text),
    for the parameters that have one.
    """
    defaults = {}
    for name, parameter in (template.get("Parameters") or {}).items():
        if "Default" in parameter:
            defaults[name] = str(parameter["Default"])
    return defaults


def _lookup(values: Mapping[str, Any], name: str) -> Any:
    try:
        return values[name]
    except KeyError:
        raise RenderError(f"no value for {name!r} in the rendering table") from None


def _sub(text: str, values: Mapping[str, Any]) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name.startswith("!"):
            return "${" + name[1:] + "}"
        return str(_lookup(values, name))

    return _SUB_VARIABLE.sub(replace, text)


def resolve(node: Any, values: Mapping[str, Any]) -> Any:
    """
    Resolve the intrinsic functions in C{node}.

    @param values: What each name stands for: parameter names, resource
        logical ids (for C{Ref}), C{"Resource.Attribute"} (for C{Fn::GetAtt}
        and C{${Resource.Attribute}}), pseudo parameters such as
        C{"AWS::Region"}.
    @return: C{node} with every intrinsic function replaced by its value.
    @raise RenderError: for a missing name or an unsupported function.
    """
    if isinstance(node, list):
        return [resolve(item, values) for item in node]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        ((key, argument),) = node.items()
        if key == "Ref":
            return _lookup(values, argument)
        if key == "Fn::GetAtt":
            if isinstance(argument, str):
                argument = argument.split(".", 1)
            return _lookup(values, f"{argument[0]}.{argument[1]}")
        if key == "Fn::Sub":
            if isinstance(argument, str):
                return _sub(argument, values)
            text, local = argument
            table = dict(values)
            table.update({name: resolve(value, values) for name, value in local.items()})
            return _sub(text, table)
        if key == "Fn::Base64":
            text = resolve(argument, values)
            return base64.b64encode(str(text).encode("utf-8")).decode("ascii")
        if key == "Fn::Join":
            separator, items = argument
            return str(separator).join(str(item) for item in resolve(items, values))
        if key == "Fn::Select":
            index, items = argument
            return resolve(items, values)[int(resolve(index, values))]
        if key.startswith("Fn::") or key == "Condition":
            raise RenderError(f"{key} is not supported by the renderer")
    return {key: resolve(value, values) for key, value in node.items()}


def userData(template: Mapping[str, Any], logicalId: str, values: Mapping[str, Any]) -> str:
    """
    The script an instance's C{UserData} hands to cloud-init.

    @raise RenderError: if the C{UserData} is not wrapped in C{Fn::Base64}
        (CloudFormation would pass the text unencoded and the launch fails),
        or cannot be rendered.
    """
    properties = template["Resources"][logicalId]["Properties"]
    raw = properties.get("UserData")
    if not (isinstance(raw, dict) and list(raw) == ["Fn::Base64"]):
        raise RenderError(f"{logicalId}: UserData is not wrapped in Fn::Base64")
    return base64.b64decode(resolve(raw, values)).decode("utf-8")
