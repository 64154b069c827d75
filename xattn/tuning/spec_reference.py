"""The study spec's reference in docs/specs.md, written from the spec's own pydantic models, so
it says what `xattn study run` accepts: every field's name, type, limits, default and description.

    python -m xattn.tuning.spec_reference docs/specs.md           # rewrite the generated part
    python -m xattn.tuning.spec_reference docs/specs.md --check   # exit 1 if the page is stale

A field without a description stops the writer: a new field gets documented where it is added.
"""

from __future__ import annotations

import argparse
import re
import sys
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from xattn.tuning.spec import StudySpec

BEGIN = "<!-- BEGIN spec reference: written by python -m xattn.tuning.spec_reference; edit the models, not this -->"
END = "<!-- END spec reference -->"
SIMPLE_TYPES = {int: "whole number", float: "number", str: "text", bool: "true or false", Path: "path", Any: "any"}
LIMITS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}


class MissingDescription(ValueError):
    """A spec field without a description: its row in the reference would be blank."""


def render_reference(root: type[BaseModel] = StudySpec) -> str:
    """Markdown: one table per section of the spec, the top level first, sections in field order."""
    sections: list[tuple[str, type[BaseModel]]] = []
    _collect(root, "", sections, set())
    paths = {model: path for path, model in sections}
    parts = []
    for path, model in sections:
        heading = f"`{path}`" if path else "Top level"
        intro = (model.__dict__.get("__doc__") or "").strip()
        rows = [
            f"| `{name}` | {_type(field.annotation, paths)}{_limits(field)} | {_default(field, paths)} "
            f"| {_description(model, name, field)} |"
            for name, field in model.model_fields.items()
        ]
        parts.append(
            "\n".join(
                [f"### {heading}", "", *([" ".join(intro.split()), ""] if intro else [])]
                + ["| field | type | default | what it is |", "| --- | --- | --- | --- |", *rows]
            )
        )
    return "\n\n".join(parts) + "\n"


def _collect(model: type[BaseModel], path: str, sections: list, seen: set) -> None:
    if model in seen:
        return
    seen.add(model)
    sections.append((path, model))
    for name, field in model.model_fields.items():
        child = f"{path}.{name}" if path else name
        for nested, suffix in _nested_models(field.annotation):
            if not _inline(nested):
                _collect(nested, child + suffix, sections, seen)


def _nested_models(annotation: Any, suffix: str = "") -> list[tuple[type[BaseModel], str]]:
    """The sections below a field: its own model, or a mapping's values (`.NAME`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, suffix)]
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is dict:
        return _nested_models(args[1], suffix + ".NAME")
    if origin in (Union, types.UnionType, Annotated, list):
        return [
            found
            for arg in args
            if not isinstance(arg, annotated_types.BaseMetadata)
            for found in _nested_models(arg, suffix)
        ]
    return []


def _inline(model: type[BaseModel]) -> bool:
    """A one-field model reads best in place: `{top_variance: whole number}`."""
    return len(model.model_fields) == 1


def _type(annotation: Any, paths: dict) -> str:
    if annotation is type(None):
        return "null"
    if annotation in SIMPLE_TYPES:
        return SIMPLE_TYPES[annotation]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        if _inline(annotation):
            ((name, field),) = annotation.model_fields.items()
            return f"`{{{name}: {_type(field.annotation, paths)}}}`"
        path = paths[annotation]
        return f"[`{path}`](#{anchor(f'`{path}`')})"
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return " or ".join(f"`{value}`" for value in args)
    if origin is Annotated:
        return _type(args[0], paths)
    if origin in (Union, types.UnionType):
        return " or ".join(_type(arg, paths) for arg in args)
    if origin is list:
        return f"list of {_type(args[0], paths)}" if args and args[0] is not Any else "list"
    if origin is dict:
        values = "values" if args[1] is Any else _type(args[1], paths)
        return f"mapping of name to {values}"
    raise TypeError(f"no reference wording for the type {annotation!r}")


def _limits(field: FieldInfo) -> str:
    limits = []
    for item in field.metadata:
        for bound, sign in LIMITS.items():
            if isinstance(item, annotated_types.BaseMetadata) and hasattr(item, bound):
                limits.append(f"{sign} {_value(getattr(item, bound))}")
    return f", {', '.join(limits)}" if limits else ""


def _default(field: FieldInfo, paths: dict) -> str:
    if field.default_factory is not None:
        return f"`{_value(field.default_factory())}`"
    if field.default is PydanticUndefined:
        return "required"
    if isinstance(field.default, BaseModel):
        return "its section's defaults" if type(field.default) in paths else f"`{_value(field.default.model_dump())}`"
    return f"`{_value(field.default)}`"


def _value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).removesuffix("\n...\n").strip()


def _description(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    if not field.description:
        raise MissingDescription(
            f"{model.__name__}.{name} has no description: add Field(description=...) in {model.__module__}"
        )
    return field.description.replace("|", "\\|")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def with_reference(page: str) -> str:
    """`page` with the text between its markers replaced by the reference."""
    before, found, rest = page.partition(BEGIN)
    _, found_end, after = rest.partition(END)
    if not (found and found_end):
        raise ValueError(f"the page has no {BEGIN!r} ... {END!r} markers")
    return f"{before}{BEGIN}\n\n{render_reference()}\n{END}{after}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", type=Path, help="the markdown page holding the markers, e.g. docs/specs.md")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs instead of writing it")
    args = parser.parse_args(argv)
    current = args.page.read_text()
    try:
        wanted = with_reference(current)
    except ValueError as error:
        print(f"error: {args.page}: {error}", file=sys.stderr)
        return 2
    if args.check:
        if current != wanted:
            print(f"{args.page} is stale: run python -m xattn.tuning.spec_reference {args.page}", file=sys.stderr)
            return 1
        return 0
    args.page.write_text(wanted)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
