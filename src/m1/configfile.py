"""One config loader for every command (`m1 eval`, `m1 data`, `m1 train`), over typed settings.

A config is a `settings` class: a frozen pydantic dataclass whose annotations (Literal choices,
Field ranges, nested settings) and validators are the only checks of its values. Its values come
in layers, each overriding the one before:

    the class defaults  <  a YAML or JSON file  <  explicit flags  <  key=value pairs

`key=value` pairs name a field; dotted keys reach into nested mappings and settings
(`engine_options.n_slots=4`, `dedup.ngram=8`, `collect.sources.0.limit=5`: a number picks a
list item). A string field keeps the text verbatim; anything else reads it as a YAML scalar or
flow collection (`budgets=[32,64]`, `engine_options={n_slots: 4}`); `null`, `~` or nothing is
null for a field that takes null. The model checks the merged layers, and its first complaint
becomes one line of M1Error naming the file (or the command line), the key and what was expected.
"""
from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Sequence, TypeVar

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic import dataclasses as pydantic_dataclasses
from pydantic_core import ErrorDetails
from typing_extensions import dataclass_transform

from m1.errors import M1Error, first_line

T = TypeVar("T")
CLI = "command line"
_YAML_NULLS = ("", "~", "null", "Null", "NULL")
_KEY = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+)*")
# Numbers as YAML 1.2 reads them. PyYAML follows YAML 1.1, where 8:16:8 is a base-60 integer
# (29768) and 1e-5 a string: a budget range must reach the model as text, and a number inside a
# free mapping (engine_options) has no annotation that could turn it back into one.
_INT = re.compile(r"^[-+]?[0-9][0-9_]*$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$"
                    r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")
# unknown keys are reported as such (with a guess) before any value of the same mapping
_UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")
_BOUNDS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}
CONFIG = ConfigDict(extra="forbid", coerce_numbers_to_str=True, allow_inf_nan=False)


# -- the settings classes --------------------------------------------------------------------------
@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, Field))
def settings(cls: type[T]) -> type[T]:
    """A config class: a frozen pydantic dataclass (so dataclasses.replace/asdict/fields keep
    working) with unknown keys refused, whose bad values raise one-line M1Errors naming the field."""
    built: Any = pydantic_dataclasses.dataclass(frozen=True, config=CONFIG)(cls)
    init = built.__init__

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        try:
            init(self, *args, **kwargs)
        except ValidationError as e:
            raise M1Error(explain(e, built)) from None

    built.__init__ = __init__
    return typing.cast("type[T]", built)


def _split(value: object) -> object:
    return [x.strip() for x in value.split(",") if x.strip()] if isinstance(value, str) else value


# A list that may also be written as one comma-separated string (`tags: a, b`, `modules=q,k`).
CommaList = Annotated[tuple[T, ...], BeforeValidator(_split)]


@dataclass
class Settings:
    """The layers merged, before the model checks them: nested mappings, the keys set on the
    command line, the text each key=value gave and the flag that set each key (for messages)."""

    data: dict
    file: str | None = None
    cli_keys: set[str] = field(default_factory=set)
    texts: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)

    def from_cli(self, key: str) -> bool:
        """Whether `key` (dotted) was set on the command line, itself or through a mapping above it."""
        parts = key.split(".")
        return any(".".join(parts[:n]) in self.cli_keys for n in range(len(parts), 0, -1))

    def origin(self, key: str) -> str:
        """Where the value at `key` came from: the file, or the command line."""
        if self.from_cli(key) or any(k.startswith(key + ".") for k in self.cli_keys):
            return CLI
        return self.file or CLI

    def set(self, key: str | tuple[str, ...], value: object) -> None:
        """Put one value at a dotted key (or a tuple of key parts), making mappings on the way."""
        parts = key if isinstance(key, tuple) else tuple(key.split("."))
        name = ".".join(parts)
        node: Any = self.data
        for i, part in enumerate(parts[:-1]):
            at = ".".join(parts[: i + 1])
            idx: Any = _index(node, part, at) if isinstance(node, list) else part
            child = node[idx] if isinstance(node, list) else node.get(part)
            if not isinstance(child, (dict, list)):
                if parts[i + 1].isdigit():
                    raise M1Error(f"{CLI}: {name}: there is no list at {at} to index; give the whole list "
                                  f"({at}=[...]) or write it in the config file")
                child = {}
            node[idx] = child
            node = child
        if isinstance(node, list):
            node[_index(node, parts[-1], name)] = value
        else:
            node[parts[-1]] = value
        self.cli_keys.add(name)

    def value(self, key: str, default: object) -> object:
        """What the layers hold at `key`: the text a key=value gave, else the merged value."""
        if key in self.texts:
            return self.texts[key]
        node: Any = self.data
        for part in key.split(".") if key else ():
            try:
                node = node[int(part)] if isinstance(node, list) else node[part]
            except (KeyError, IndexError, ValueError, TypeError):
                return default
        return node


def _index(items: list, part: str, at: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    at = at.rsplit(".", 1)[0] if "." in at else at
    raise M1Error(f"{CLI}: {at}.{part}: {at} is a list of {len(items)} item(s); "
                  f"pick one with a number from 0 to {len(items) - 1}")


# -- the public API ------------------------------------------------------------------------------
def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = (), *,
                flags: Mapping[str | tuple[str, ...], object] | None = None, labels: Mapping[str, str] | None = None,
                drop: Sequence[str] = (), what: str = "config") -> T:
    """`cls` (a settings class) from its defaults, a YAML/JSON file, explicit `flags` and `key=value` overrides.

    flags: values from a command's own options, already typed, by (dotted) key; only those the
    user gave. labels: how the command line spells those flags (`--top-p`), for messages.
    drop: top-level file keys to ignore (e.g. facts saved beside the settings).
    what: the config's name in messages ("train config").
    """
    return build(cls, gather(cls, path, overrides, flags, labels=labels, drop=drop, what=what))


def gather(cls: type, path: str | Path | None, overrides: Sequence[str] = (),
           flags: Mapping[str | tuple[str, ...], object] | None = None, *, labels: Mapping[str, str] | None = None,
           drop: Sequence[str] = (), what: str = "config") -> Settings:
    """The layers merged, unchecked (for a loader that adds its own steps before `build`)."""
    s = Settings(read_file(path, what) if path is not None else {}, str(path) if path is not None else None)
    for k in drop:
        s.data.pop(k, None)
    for key, value in (flags or {}).items():
        s.set(key, value)
    s.labels.update(labels or {})
    for item in overrides:
        key, text = parse_override(item)
        s.set(key, _read(text, _type_at(cls, [int(p) if p.isdigit() else p for p in key.split(".")])))
        s.texts[key] = text
        s.labels.pop(key, None)
    return s


def build(cls: type[T], s: Settings) -> T:
    """The settings from merged layers: the model checks every value; its complaint is one M1Error."""
    try:
        return TypeAdapter(cls).validate_python(s.data)
    except ValidationError as e:
        raise M1Error(explain(e, cls, s)) from None
    except M1Error as e:  # a check across fields: the values may come from the file or the command line
        if s.file and not str(e).startswith((s.file, CLI)):
            raise M1Error(f"{f'{s.file} + {CLI}' if s.cli_keys else s.file}: {e}") from None
        raise


def parse_override(item: str) -> tuple[str, str]:
    """`key=value` -> (key, value text); anything else is an M1Error."""
    key, eq, text = item.partition("=")
    if not eq:
        raise M1Error(f"{CLI}: {item!r} is not key=value (e.g. seed=1); the config file itself goes "
                      "after --config")
    key = key.strip()
    if not _KEY.fullmatch(key):
        raise M1Error(f"{CLI}: {key!r} in {item!r} is not a setting name; write key=value or "
                      "section.key=value (e.g. engine_options.n_slots=4)")
    return key, text


def is_override(token: str) -> bool:
    key, eq, _ = token.partition("=")
    return bool(eq) and _KEY.fullmatch(key.strip()) is not None


def split_args(tokens: Sequence[str], config: str | Sequence[str] | None = None,
               positional_file: bool = True) -> tuple[str | None, list[str]]:
    """A command line's config file and its key=value pairs. `config` is what `--config` took (see
    add_config_option: the file, then any key=value pairs that follow it); without it, the file is
    a first positional that is not key=value (where the command takes one: `positional_file`)."""
    tokens = list(tokens)
    if isinstance(config, str):
        return config, tokens
    if config:
        return config[0], tokens + list(config[1:])
    if positional_file and tokens and not is_override(tokens[0]):
        return tokens[0], tokens[1:]
    return None, tokens


def add_config_option(parser: Any, what: str) -> None:
    """`--config FILE [key=value ...]`, the same on every command. The pairs may follow the file
    directly: argparse cannot give them to a positional once an option has come between."""
    parser.add_argument("--config", dest="config_file", nargs="+", metavar=("FILE", "key=value"),
                        help=f"{what} (YAML or JSON), then settings over it: key=value, dotted into "
                        "sections (a.b=1), values read as YAML ([1,2], {k: v}, null)")


def read_file(path: str | Path, what: str = "config") -> dict:
    """A config file's top-level mapping (an empty file is no settings)."""
    p = Path(path)
    if not p.is_file():
        folder = " (that is a folder)" if p.is_dir() else ""
        raise M1Error(f"{what} not found: {p}{folder}; give the path of an existing YAML or JSON file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise M1Error(f"{p}: cannot read it ({first_line(e)}); give a UTF-8 YAML or JSON file") from None
    if p.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise M1Error(f"{p} line {e.lineno}: not valid JSON ({e.msg}); fix the file") from None
    else:
        import yaml

        try:
            data = yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
            at = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(e, "problem", None) or first_line(e)
            raise M1Error(f"{p}{at}: not valid YAML ({problem}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}
        raise M1Error(f"{p}: the top level must be a mapping of settings (key: value), "
                      f"got {kind.get(type(data), type(data).__name__)}; see --print-config for the layout")
    if set(data) == {"config", "environment"} and isinstance(data["config"], dict):
        return data["config"]  # a run folder's config.json: rerun (or vary) that run
    return data


def to_plain(obj: object) -> Any:
    """Settings as mappings and tuples as lists, all the way down (what a file holds)."""
    return TypeAdapter(Any).dump_python(obj, mode="json")


def dump(obj: object) -> str:
    """A config as YAML that `--config` reads back to the same config."""
    import yaml

    return yaml.safe_dump(to_plain(obj), sort_keys=False, allow_unicode=True, width=1000, default_flow_style=None)


# -- reading ---------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _loader() -> Any:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    numbers = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")
    Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag not in numbers]
                                      for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    Loader.add_implicit_resolver(numbers[0], _INT, list("-+0123456789"))
    Loader.add_implicit_resolver(numbers[1], _FLOAT, list("-+0123456789."))
    return Loader


def _read(text: str, tp: Any) -> object:
    """A key=value text as the field at that key takes it: a string field keeps it verbatim (a
    quoted YAML string is unquoted); anything else reads it as YAML, keeping it as text where YAML
    cannot read it or would make a mapping or list of it unasked (`a: b`)."""
    import yaml

    stripped = text.strip()
    if _nullable(tp) and stripped in _YAML_NULLS:
        return None
    try:
        parsed = yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError:
        return text
    if _is_text(tp):
        quoted = len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\""
        return parsed if quoted and isinstance(parsed, str) else text
    if isinstance(parsed, (dict, list)) and not stripped.startswith(("[", "{")):
        return text
    return parsed


# -- types -----------------------------------------------------------------------------------------
def _strip(tp: Any) -> Any:
    """An annotation without its Annotated metadata and without `| None`."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
            tp = args[0]
            continue
        return tp


def _nullable(tp: Any) -> bool:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp is None or tp is Any or type(None) in typing.get_args(tp)


def _is_text(tp: Any) -> bool:
    base = _strip(tp)
    return base is str or typing.get_origin(base) is Literal and all(isinstance(a, str) for a in typing.get_args(base))


def _fields(tp: Any) -> dict[str, Any]:
    """A settings class's fields and their annotations (empty for anything else)."""
    return {k: f.annotation for k, f in getattr(_strip(tp), "__pydantic_fields__", {}).items()}


def _type_at(cls: Any, path: Sequence[int | str]) -> Any:
    """The annotation at a path of field names and list positions; Any where no field is named."""
    tp = cls
    for part in path:
        base = _strip(tp)
        if isinstance(part, str) and part in _fields(base):
            tp = _fields(base)[part]
        elif isinstance(part, int) and typing.get_origin(base) is tuple:
            tp = typing.get_args(base)[0]
        else:
            return Any
    return tp


# -- messages --------------------------------------------------------------------------------------
def explain(e: ValidationError, cls: Any, s: Settings | None = None) -> str:
    """The first complaint of a validation as one line: where the value came from (the file, the
    command line, or the class when built in code), its key (or the flag that set it), what was wrong."""
    err: ErrorDetails = sorted(e.errors(), key=lambda x: x["type"] not in _UNKNOWN)[0]
    loc = list(err["loc"])
    # the deepest setting on the error's path: a list of numbers is one setting, not one per item
    n = max((i for i in range(1, len(loc) + 1) if isinstance(loc[i - 1], str) and _type_at(cls, loc[:i]) is not Any),
            default=0)
    key = ".".join(map(str, loc[:n]))
    s = s or Settings({}, cls.__name__)
    where, name = s.origin(key), s.labels.get(key, key)
    got = _show(s.value(key, err["input"]) if n else err["input"])
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind in _UNKNOWN:
        bad, prefix, known = str(loc[-1]), ".".join(map(str, loc[:-1])), list(_fields(_type_at(cls, loc[:-1])))
        full = f"{prefix}.{bad}" if prefix else bad
        if f"{bad}_env" in known:  # api_key: secrets stay in the environment
            return (f"{s.origin(full)}: {full}: {bad} must not be written in a config; put it in an environment "
                    f"variable and name that variable with {bad}_env")
        close = difflib.get_close_matches(bad, known, n=1)
        guess = f"; did you mean {(prefix + '.' if prefix else '') + close[0]!r}?" if close else ""
        section = f" in {prefix}" if prefix else ""
        return f"{s.origin(full)}: unknown setting {full!r}{guess} (known{section}: {', '.join(known)})"
    if kind == "missing":
        full, under = ".".join(map(str, loc)), ".".join(map(str, loc[:-1]))
        return (f"{s.file or where}: {full} is required; add `{loc[-1]}: ...`{f' under {under}' if under else ''} "
                f"to the config file or pass {full}=...")
    if kind == "literal_error":
        choices = ", ".join(map(str, typing.get_args(_strip(_type_at(cls, loc[:n])))))
        return f"{where}: {name} must be one of {choices}, got {got}"
    if set(ctx) & set(_BOUNDS):
        op, bound = next((_BOUNDS[k], v) for k, v in ctx.items() if k in _BOUNDS)
        return f"{where}: {name} is {_show(err['input'])}; it must be {op} {bound:g}"
    if kind in ("value_error", "assertion_error"):
        return f"{where}: {name}: {first_line(Exception(err['msg'].split(', ', 1)[-1]))}"
    return f"{where}: {name}: expected {describe(_type_at(cls, loc[:n]))}, got {got}"


def describe(tp: Any, plural: bool = False) -> str:
    """A type annotation in words: "list of integers", "integer or null"."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        words = " or ".join(describe(a, plural) for a in args if a is not type(None))
        return words + (" or null" if type(None) in args else "")
    if origin is tuple or tp is tuple:
        return ("lists of " if plural else "list of ") + (describe(args[0], True) if args else "values")
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if dataclasses.is_dataclass(tp):
        return f"mapping{'s' if plural else ''} of {getattr(tp, '__name__', 'nested')} settings"
    names = {int: ("integer", "integers"), float: ("number", "numbers"), str: ("string", "strings"),
             bool: ("true or false", "true/false values"), dict: ("mapping", "mappings")}
    tp = dict if origin is dict else tp
    return names[tp][plural] if tp in names else getattr(tp, "__name__", str(tp))


def _show(value: object) -> str:
    if value is None:
        return "null"
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."
