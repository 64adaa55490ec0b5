"""One config loader for every command (`m1 eval`, `m1 data`, `m1 train`).

A config is a frozen dataclass. Its values come in layers, each overriding the one before:

    the dataclass defaults  <  a YAML or JSON file  <  explicit flags  <  key=value pairs

`key=value` pairs name a field; dotted keys reach into nested mappings and dataclasses
(`engine_options.n_slots=4`, `dedup.ngram=8`, `collect.sources.0.limit=5`: a number picks a
list item). A value is read as the field's type wants it: a string field keeps the text
verbatim, anything else reads it as a YAML scalar or flow collection (`budgets=[32,64]`,
`engine_options={n_slots: 4}`); `null`, `~` or nothing is null. Values are checked against
the dataclass annotations (int, float, str, bool, tuple[X, ...], dict, nested dataclasses,
X | None and other unions), and every bad input raises one line of M1Error that names the
file (or the command line), the key and what was expected.
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
from typing import Any, Callable, Mapping, Sequence, TypeVar

from m1.errors import M1Error, first_line

T = TypeVar("T")
CLI = "command line"
_YAML_NULLS = ("", "~", "null", "Null", "NULL")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_KEY = re.compile(r"[A-Za-z_][\w-]*(?:\.[\w-]+)*")
# YAML 1.1 (PyYAML) reads 1e-5 as a string: a float needs a dot there. Configs read it as 1.2 does.
# Numbers as YAML 1.2 reads them. PyYAML follows YAML 1.1, where 8:16:8 is a base-60 integer
# (29768) and 1e-5 a string; a budget range must stay text and a learning rate a number.
_INT = re.compile(r"^[-+]?[0-9][0-9_]*$")
_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$"
                    r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")


@dataclass(frozen=True)
class _Text:
    """A value typed on the command line, not yet read: how depends on the field it goes to."""

    text: str


class _Mismatch(Exception):
    """A value that is not of the field's type (turned into one M1Error at the field)."""


@dataclass
class Settings:
    """The layers merged, before typing: nested mappings, and the keys set on the command line."""

    data: dict
    file: str | None = None
    cli_keys: set[str] = field(default_factory=set)

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
            idx: int | str = part
            if isinstance(node, list):
                idx = _index(node, part, at)
                child = node[idx]
            else:
                child = node.get(part)
            if isinstance(child, _Text):
                child = _plain(child)
            if not isinstance(child, (dict, list)):
                if parts[i + 1].isdigit():
                    raise M1Error(f"{CLI}: {name}: there is no list at {at} to index; give the whole list "
                                  f"({at}=[...]) or write it in the config file")
                child = {}
            node[idx] = child
            node = child
        if isinstance(node, list):
            node[_index(node, parts[-1], ".".join(parts))] = value
        else:
            node[parts[-1]] = value
        self.cli_keys.add(name)


def _index(items: list, part: str, at: str) -> int:
    if part.isdigit() and int(part) < len(items):
        return int(part)
    at = at.rsplit(".", 1)[0] if "." in at else at
    raise M1Error(f"{CLI}: {at}.{part}: {at} is a list of {len(items)} item(s); "
                  f"pick one with a number from 0 to {len(items) - 1}")


# -- the public API ------------------------------------------------------------------------------
def load_config(cls: type[T], path: str | Path | None, overrides: Sequence[str] = (), *,
                flags: Mapping[str | tuple[str, ...], object] | None = None, drop: Sequence[str] = (),
                what: str = "config", parsers: Mapping[str, Callable[[Any], object]] | None = None) -> T:
    """`cls` (a dataclass) from its defaults, a YAML/JSON file, explicit `flags` and `key=value` overrides.

    flags: values from a command's own options, already typed, by (dotted) key; only those the
    user gave. drop: top-level file keys to ignore (e.g. facts saved beside the settings).
    what: the config's name in messages ("train config"). parsers: per-key readers that take
    the plain value and return the field's value, raising M1Error/ValueError with a reason.
    """
    return build(cls, gather(path, overrides, flags, drop=drop, what=what), parsers)


def gather(path: str | Path | None, overrides: Sequence[str] = (),
           flags: Mapping[str | tuple[str, ...], object] | None = None, *, drop: Sequence[str] = (),
           what: str = "config") -> Settings:
    """The layers merged, untyped (for a loader that adds its own steps before `build`)."""
    s = Settings(read_file(path, what) if path is not None else {}, str(path) if path is not None else None)
    for k in drop:
        s.data.pop(k, None)
    for key, value in (flags or {}).items():
        s.set(key, value)
    for item in overrides:
        key, text = parse_override(item)
        s.set(key, _Text(text))
    return s


def build(cls: type[T], s: Settings, parsers: Mapping[str, Callable[[Any], object]] | None = None) -> T:
    """The dataclass from merged settings, every value checked against the field's annotation."""
    return typing.cast(T, _build(cls, s.data, "", s, None, parsers or {}))


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
        data = _json(text, p)
    else:
        try:
            import yaml
        except ImportError:
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                raise M1Error(f"{p}: reading YAML needs PyYAML: pip install pyyaml "
                              "(or write the config as JSON)") from None
        else:
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
        raise M1Error(f"{p}: the top level must be a mapping of settings (key: value), "
                      f"got {_kind(data)}; see --print-config for the layout")
    if set(data) == {"config", "environment"} and isinstance(data["config"], dict):
        return data["config"]  # a run folder's config.json: rerun (or vary) that run
    return data


def to_plain(obj: object) -> object:
    """Dataclasses as mappings and tuples as lists, all the way down (what a file holds)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj


def dump(obj: object) -> str:
    """A config as YAML that `--config` reads back to the same config (JSON without PyYAML)."""
    plain = to_plain(obj)
    try:
        import yaml
    except ImportError:
        return json.dumps(plain, indent=2) + "\n"
    return yaml.safe_dump(plain, sort_keys=False, allow_unicode=True, width=1000, default_flow_style=None)


# -- reading ---------------------------------------------------------------------------------------
def _json(text: str, p: Path) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise M1Error(f"{p} line {e.lineno}: not valid JSON ({e.msg}); fix the file") from None


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


def _yaml(text: str) -> object:
    """One command-line value as YAML (a scalar or a flow list/mapping); _Mismatch if it is not YAML."""
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    try:
        return yaml.load(text, Loader=_loader())  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError:
        raise _Mismatch from None


def _plain(value: object) -> object:
    """A value for a field of no particular type (inside a dict): command-line text read as YAML,
    kept as text where YAML would make a mapping or list of it unasked (`a: b`) or cannot read it."""
    if isinstance(value, _Text):
        text = value.text.strip()
        try:
            parsed = _yaml(value.text)
        except _Mismatch:
            return value.text
        if isinstance(parsed, (dict, list)) and not text.startswith(("[", "{")):
            return value.text
        return parsed
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# -- typing --------------------------------------------------------------------------------------
def _build(cls: Any, raw: object, prefix: str, s: Settings, base: object,
           parsers: Mapping[str, Callable[[Any], object]]) -> object:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if not isinstance(raw, dict):
        raise _Mismatch
    for k in raw:
        name = str(k)
        if name in fields:
            continue
        key = prefix + name
        where = s.origin(key)
        if f"{name}_env" in fields:  # api_key: secrets stay in the environment
            raise M1Error(f"{where}: {key}: {name} must not be written in a config; put it in an environment "
                          f"variable and name that variable with {name}_env")
        close = difflib.get_close_matches(name, list(fields), n=1)
        guess = f"; did you mean {prefix + close[0]!r}?" if close else ""
        section = f" in {prefix[:-1]}" if prefix else ""
        raise M1Error(f"{where}: unknown setting {key!r}{guess} (known{section}: {', '.join(fields)})")
    values = {}
    for name, value in raw.items():
        key = prefix + name
        try:
            if key in parsers:
                values[name] = _custom(parsers[key], value, key, s)
            else:
                values[name] = _convert(hints[name], value, key, s, _default(fields[name]), parsers)
        except _Mismatch:
            raise M1Error(f"{s.origin(key)}: {key}: expected {describe(hints[name])}, got {_show(value)}") from None
    try:
        if base is not None:
            return dataclasses.replace(typing.cast(Any, base), **values)
        missing = [n for n, f in fields.items() if n not in values
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            under = f" under {prefix[:-1]}" if prefix else ""
            raise M1Error(f"{s.file or CLI}: {prefix + missing[0]} is required; add `{missing[0]}: ...`{under} "
                          f"to the config file or pass {prefix + missing[0]}=...")
        return cls(**values)
    except M1Error as e:  # the dataclass's own checks: the value may come from the file or the command line
        if s.file and not str(e).startswith((s.file, CLI)):
            where = f"{s.file} + {CLI}" if s.cli_keys else s.file
            raise M1Error(f"{where}: {e}") from None
        raise
    except TypeError as e:
        raise M1Error(f"{s.file or CLI}: {prefix or cls.__name__}: {first_line(e)}") from None


def _custom(parse: Callable[[Any], object], value: object, key: str, s: Settings) -> object:
    try:
        return parse(_plain(value))
    except (M1Error, ValueError, TypeError) as e:
        raise M1Error(f"{s.origin(key)}: {key}: {first_line(e)}") from None


def _default(f: dataclasses.Field) -> object:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _convert(tp: Any, value: object, key: str, s: Settings, default: object,
             parsers: Mapping[str, Callable[[Any], object]]) -> object:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (value is None or isinstance(value, _Text) and value.text.strip() in _YAML_NULLS):
            return None
        options = [a for a in args if a is not type(None)]
        for option in sorted(options, key=lambda a: a is str):  # str last: "true" is the bool of `bool | str`
            try:
                return _convert(option, value, key, s, default, parsers)
            except _Mismatch:
                continue
        raise _Mismatch
    if dataclasses.is_dataclass(tp):
        if isinstance(value, _Text):
            value = _yaml(value.text)
        base = default if type(default) is tp else None
        return _build(tp, value, key + ".", s, base, parsers)
    if origin is tuple or tp is tuple:
        return _tuple(args, value, key, s, parsers)
    if origin is dict or tp is dict:
        if isinstance(value, _Text):
            value = _yaml(value.text) if value.text.strip() else None
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise _Mismatch
        return _plain(value)
    if tp is bool:
        return _bool(value)
    if tp is int:
        return _int(value)
    if tp is float:
        return _float(value)
    if tp is str:
        return _str(value)
    value = _plain(value)  # Any and types this loader does not know: as read
    if isinstance(tp, type) and not isinstance(value, tp):
        raise _Mismatch
    return value


def _tuple(args: tuple, value: object, key: str, s: Settings, parsers: Mapping[str, Callable[[Any], object]]):
    item_type = args[0] if args else Any
    items: list[object]
    if isinstance(value, _Text):
        text = value.text.strip()
        if text.startswith("["):
            parsed = _yaml(text)
            if not isinstance(parsed, list):
                raise _Mismatch
            items = parsed
        else:  # a,b,c
            items = [_Text(x.strip()) for x in text.split(",") if x.strip()]
    elif isinstance(value, str):
        items = [x.strip() for x in value.split(",") if x.strip()]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif value is None:
        items = []
    else:
        raise _Mismatch
    if len(args) == 2 and args[1] is Ellipsis or len(args) <= 1:
        return tuple(_convert(item_type, x, f"{key}.{i}", s, None, parsers) for i, x in enumerate(items))
    if len(items) != len(args):
        raise _Mismatch
    return tuple(_convert(t, x, f"{key}.{i}", s, None, parsers) for i, (t, x) in enumerate(zip(args, items)))


def _bool(value: object) -> bool:
    if isinstance(value, _Text):
        value = value.text.strip().lower()
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise _Mismatch


def _int(value: object) -> int:
    if isinstance(value, _Text):
        value = value.text
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                value = float(value.strip())
            except ValueError:
                raise _Mismatch from None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise _Mismatch


def _float(value: object) -> float:
    if isinstance(value, _Text):
        value = value.text
    if isinstance(value, bool):
        raise _Mismatch
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            raise _Mismatch from None
    raise _Mismatch


def _str(value: object) -> str:
    if isinstance(value, _Text):
        text = value.text
        stripped = text.strip()
        if len(stripped) >= 2 and stripped[0] == stripped[-1] and stripped[0] in "'\"":
            try:  # a quoted YAML string: "null", "a: b" as text
                parsed = _yaml(stripped)
            except _Mismatch:
                return text
            return parsed if isinstance(parsed, str) else text
        return text
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _Mismatch


# -- messages --------------------------------------------------------------------------------------
def describe(tp: Any, plural: bool = False) -> str:
    """A type annotation in words: "list of integers", "integer or null"."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        words = " or ".join(describe(a, plural) for a in args if a is not type(None))
        return words + (" or null" if type(None) in args else "")
    if origin is tuple or tp is tuple:
        inner = describe(args[0], True) if args else "values"
        return ("lists of " if plural else "list of ") + inner
    if dataclasses.is_dataclass(tp):
        return f"mapping{'s' if plural else ''} of {getattr(tp, '__name__', 'nested')} settings"
    names = {int: ("integer", "integers"), float: ("number", "numbers"), str: ("string", "strings"),
             bool: ("true or false", "true/false values"), dict: ("mapping", "mappings")}
    if origin is dict:
        tp = dict
    if tp in names:
        return names[tp][plural]
    return getattr(tp, "__name__", str(tp))


def _kind(value: object) -> str:
    return {list: "a list", str: "a string", int: "a number", float: "a number", bool: "true/false"}.get(
        type(value), type(value).__name__)


def _show(value: object) -> str:
    if isinstance(value, _Text):
        value = value.text
    if value is None:
        return "null"
    text = repr(_unwrap(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _unwrap(value: object) -> object:
    if isinstance(value, _Text):
        return value.text
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unwrap(v) for v in value]
    return value
