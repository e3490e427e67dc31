"""Command-line options of a `CompressionSpec`, generated from its fields: the engine's `skillkd compress` and
the client's `skillkd submit` use the same options, and a new spec field appears in both without an edit here.

Each field `foo_bar` becomes `--foo-bar` (booleans: `--foo-bar/--no-foo-bar`), with the field's description as
help and its constraints left to the model. Every option defaults to "not given", so the spec's own defaults
(and presets) apply. Integers accept `24M`, `950k`, `2.5G`. `--clusters` takes `k`, `auto`, or explicit groups
of r0..rL written `0;1-4;5-8;9-12` (the one syntax of both commands).
"""

from __future__ import annotations

import json
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

import click
from pydantic import ValidationError

from core.spec import CompressionSpec, parse_param_count

# Older, shorter spellings kept working next to the generated name.
ALIASES: dict[str, tuple[str, ...]] = {"export_onnx": ("--onnx",)}
OFF_NAMES: dict[str, str] = {"contiguous": "--non-contiguous"}
CLUSTERS_HELP = "k (default 4), 'auto', or explicit groups of r0..rL like '0;1-4;5-8;9-12'."


def parse_clusters(value: str) -> int | str | list[list[int]]:
    """'4', 'auto', or explicit groups '0;1-4;5,6,7;8-12' -> 4, 'auto', [[0], [1, 2, 3, 4], ...]."""
    value = value.strip()
    if value == "auto":
        return value
    if value.isdigit():
        return int(value)
    groups: list[list[int]] = []
    for part in value.split(";"):
        members: list[int] = []
        for item in part.split(","):
            item = item.strip()
            try:
                if "-" in item:
                    a, b = item.split("-", 1)
                    members.extend(range(int(a), int(b) + 1))
                elif item:
                    members.append(int(item))
            except ValueError:
                raise ValueError(
                    f"cannot read layer group {part!r} in {value!r}; expected e.g. '0;1-4;5-8;9-12'"
                ) from None
        groups.append(members)
    return groups


class CountType(click.ParamType):
    """An integer, also written 24M / 950k / 2.5G."""

    name = "count"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        if re.fullmatch(r"\s*[+-]?[0-9]+\s*", str(value)):  # a plain integer, negative too: the spec says
            return int(value)  # what range its field takes (a step count's "-5" is not a malformed size)
        try:
            return parse_param_count(str(value), "a count")
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class ClustersType(click.ParamType):
    name = "clusters"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return parse_clusters(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class JsonType(click.ParamType):
    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value)
        except ValueError:
            return value  # a plain string: the model says whether it fits


def _members(annotation: Any) -> list[Any]:
    """The alternatives of `X | None` / `Union[...]`, without None."""
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def _option(name: str, field: Any) -> tuple[list[str], dict[str, Any]]:
    """(declarations, keyword arguments) of the click option of one spec field."""
    decls, attrs = _option_parts(name, field)
    return decls, {"default": None, **attrs}


def _option_parts(name: str, field: Any) -> tuple[list[str], dict[str, Any]]:
    flag = "--" + name.replace("_", "-")
    decls = [flag, *ALIASES.get(name, ()), name]
    help_text = field.description or ""
    if name == "clusters":
        return decls, dict(type=ClustersType(), help=CLUSTERS_HELP)
    if name == "export_onnx":  # alone: fp32, as when it was a flag; or a list such as fp32,fp16,int8
        return decls, dict(type=str, is_flag=False, flag_value="fp32", help=help_text + " [default: none]")
    members = _members(field.annotation)
    if members == [bool]:
        off = OFF_NAMES.get(name, f"--no-{flag[2:]}")
        return [f"{flag}/{off}", *ALIASES.get(name, ()), name], dict(
            help=help_text + f" [default: {'on' if field.default else 'off'}]"
        )
    shown = "" if field.default is None else f" [default: {field.default}]"
    if len(members) == 1 and typing.get_origin(members[0]) is Literal:
        choices = [str(c) for c in typing.get_args(members[0])]
        return decls, dict(type=click.Choice(choices), help=help_text + shown)
    if len(members) == 1 and members[0] is int:
        return decls, dict(type=CountType(), help=help_text + shown)
    if len(members) == 1 and members[0] in (float, str):
        return decls, dict(type=members[0], help=help_text + shown)
    if len(members) == 1 and typing.get_origin(members[0]) is list:
        (item,) = typing.get_args(members[0]) or (str,)
        item_type: Any = CountType() if item is int else (float if item is float else str)
        return decls, dict(
            type=item_type, multiple=True, help=help_text + " (repeat the option for several values)" + shown
        )
    return decls, dict(type=JsonType(), help=help_text + " (a value or JSON)" + shown)


def spec_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: add one option per CompressionSpec field to a click command."""
    for name, field in reversed(list(CompressionSpec.model_fields.items())):
        decls, attrs = _option(name, field)
        f = click.option(*decls, **attrs)(f)
    return f


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The spec fields among a command's keyword arguments that the user gave (options not given are None,
    repeated options not given are empty tuples)."""
    out: dict[str, Any] = {}
    for name in CompressionSpec.model_fields:
        value = values.get(name)
        if value is None or value == ():
            continue
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def build_spec(values: dict[str, Any], base: dict[str, Any] | None = None) -> CompressionSpec:
    """CompressionSpec from `base` (e.g. a --spec JSON) and the options given; a bad value is a BadParameter
    that names the field."""
    try:
        return CompressionSpec.model_validate({**(base or {}), **given(values)})
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "spec"
        raise click.BadParameter(f"{field}: {first['msg']}", param_hint="spec") from None


__all__ = ["spec_options", "build_spec", "given", "parse_clusters", "CountType", "ClustersType"]
