"""MkDocs hook: the reference pages, generated from the code at every build.

Hand-written reference drifts from the code it describes; these pages cannot. The
configuration reference walks the pydantic settings models, the command-line reference walks
the typer application through click, and the Cedar page quotes the schema files the gateway
validates policies against. Nothing here is stored in docs/: the pages exist only in the
built site.
"""

from __future__ import annotations

import enum
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "reference/configuration.md": "configuration_page",
    "reference/cli.md": "cli_page",
    "reference/cedar-schema.md": "cedar_page",
}


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages to the site (they are built like any other page)."""
    for path, builder in PAGES.items():
        content = globals()[builder]()
        files.append(File.generated(config, path, content=content))
    return files


# --- configuration -------------------------------------------------------------------------


def configuration_page() -> str:

    from modelfence.config import Settings

    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings models in `src/modelfence/config` when the docs are built.",
        "One YAML file holds every section below; unknown keys are refused at start, and",
        "`${NAME}` in a value reads an environment variable. Relative paths are relative to",
        "the config file. How the sections work together: [Configuration](../concepts/"
        "configuration.md).",
        "",
    ]
    # A model's section is named by the first key path that reaches it (breadth first).
    where_of: dict[Any, str] = {Settings: "(top level)"}
    heading_of: dict[Any, str] = {}
    queue: list[Any] = [Settings]
    while queue:
        model = queue.pop(0)
        where = where_of[model]
        lines += [f"## `{heading_of.get(model, where)}`", ""]
        own = vars(model).get("__doc__")  # not a base class's (getdoc would inherit it)
        if own:
            lines += [inspect.cleandoc(own), ""]
        lines += ["| key | type | default | what |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            key = field.alias or name
            prefix = "" if where == "(top level)" else f"{where}."
            suffix = "[]" if _is_list(field.annotation) else ""
            nested = [m for m in _models_in(field.annotation) if m not in where_of]
            for sub in nested:
                where_of[sub] = f"{prefix}{key}{suffix}"
                if len(nested) > 1:
                    heading_of[sub] = f"{where_of[sub]} ({sub.__name__})"
                queue.append(sub)
            kind = _type_name(field.annotation, {**where_of, **heading_of})
            lines.append(f"| `{key}` | {_cell(kind)} | {_cell(_default(field))} | "
                         f"{_cell(field.description or '')} |")
        lines.append("")
    return "\n".join(lines)


def _models_in(annotation: Any) -> list[Any]:
    from pydantic import BaseModel

    found: list[Any] = []
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return [annotation]
    for arg in typing.get_args(annotation):
        found += _models_in(arg)
    return found


def _is_list(annotation: Any) -> bool:
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, set, frozenset):
        return True
    return any(_is_list(a) for a in typing.get_args(annotation)
               if typing.get_origin(annotation) in (typing.Union, types.UnionType))


def _type_name(annotation: Any, where_of: dict[Any, str]) -> str:
    """A readable type; a settings model links to its own section."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], where_of)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a, where_of) for a in args)
    if origin is typing.Literal:
        return " or ".join(repr(a) for a in args)
    if origin in (list, tuple, set, frozenset, dict):
        inner = ", ".join(_type_name(a, where_of) for a in args if a is not Ellipsis)
        return f"{origin.__name__}[{inner}]" if inner else origin.__name__
    if annotation is type(None):
        return "null"
    if annotation in where_of:
        return f"[{annotation.__name__}](#{_slug(where_of[annotation])})"
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return " or ".join(repr(m.value) for m in annotation)
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


def _slug(heading: str) -> str:
    """The anchor MkDocs gives a heading (Python-Markdown's toc slugify)."""
    text = re.sub(r"[^\w\s-]", "", heading).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _default(field: Any) -> str:
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        try:
            value = field.default_factory()
        except TypeError:
            return "(computed)"
    elif field.default is PydanticUndefined:
        return "**required**"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    return f"`{value!r}`" if value not in ([], {}) else f"`{value}`"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


# --- command line --------------------------------------------------------------------------


def cli_page() -> str:
    import typer

    from modelfence.cli.main import app

    command = typer.main.get_command(app)
    lines = [
        "# Command-line reference",
        "",
        "Generated from the `modelfence` command (its typer application) when the docs are",
        "built: every command with its arguments and options, as `--help` shows them.",
        "A shorter overview with links to the concepts: [Commands](commands.md).",
        "",
    ]
    _cli_command(command, ["modelfence"], lines)
    return "\n".join(lines)


def _cli_command(command: Any, path: list[str], lines: list[str]) -> None:
    """One command's section; typer ships its own click, so this goes by duck typing."""
    name = " ".join(path)
    ctx = command.context_class(command, info_name=path[-1])
    lines += [f"## `{name}`", ""]
    help_text = inspect.cleandoc(command.help or "")
    if help_text:
        lines += [help_text, ""]
    usage = " ".join(command.collect_usage_pieces(ctx))
    usage = re.sub(r"\{(\w+)\}", lambda m: m.group(1).upper(), usage)
    lines += ["```text", f"{name} {usage}".rstrip(), "```", ""]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines += ["| argument or option | default | what |", "|---|---|---|"]
        for param in params:
            if param.param_type_name == "argument":
                label = f"`{(param.metavar or param.name or '').upper()}`"
                what = getattr(param, "help", None) or ""
            else:
                label = ", ".join(f"`{opt}`" for opt in [*param.opts, *param.secondary_opts])
                what = param.help or ""
            default = "" if param.required else _cli_default(param)
            if param.required:
                default = "**required**"
            lines.append(f"| {label} | {default} | {_cell(what)} |")
        lines.append("")
    if hasattr(command, "list_commands"):
        for sub_name in sorted(command.list_commands(ctx)):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                _cli_command(sub, [*path, sub_name], lines)


def _cli_default(param: Any) -> str:
    default = param.default
    if default is None or callable(default) or (getattr(param, "is_flag", False) and not default):
        return ""
    if isinstance(default, (list, tuple)) and not default:
        return ""
    if isinstance(default, enum.Enum):
        default = default.value
    return f"`{default}`"


# --- Cedar ---------------------------------------------------------------------------------


def cedar_page() -> str:
    lines = [
        "# Cedar schema",
        "",
        "The schema every policy is validated against when the gateway starts (a mistyped",
        "attribute refuses to start and names the file and line). Quoted from",
        "`src/modelfence/policy/` when the docs are built; what fills each attribute is on",
        "[Policy](../concepts/policy.md).",
        "",
    ]
    for schema in sorted((ROOT / "src/modelfence/policy").glob("*.cedarschema")):
        lines += [f"## `{schema.name}`", "", "```cedar", schema.read_text().rstrip(), "```", ""]
    default = ROOT / "src/modelfence/policy/default.cedar"
    if default.exists():
        lines += ["## The shipped default policy (`default.cedar`)", "", "```cedar",
                  default.read_text().rstrip(), "```", ""]
    return "\n".join(lines)
