"""One loader for every configuration section: frozen dataclasses from parsed JSON.

A section is a frozen dataclass whose fields are declared with :func:`setting`: the
default, a one-line description, the unit and the accepted range live in one place (the
field's ``metadata``). Its ``__post_init__`` calls :func:`check_fields`, so a section
built in code is checked exactly like one read from a file, and the loader adds what
only a document can get wrong (an unknown key, an object where a section belongs)::

    @dataclass(frozen=True)
    class SafetyConfig:
        lateral_caution_mm: float = setting(5.0, "CAUTION beyond this deviation",
                                            unit="mm", ge=0, le=50)

        def __post_init__(self) -> None:
            check_fields(self, "safety")

    load_section(SafetyConfig, {"lateral_caution_mm": -1}, path="safety", file="plan.json")
    # ConfigError: plan.json: safety.lateral_caution_mm: expected a number in [0, 50] mm,
    #              got -1

Field types understood: ``bool``, ``int``, ``float`` (an int is accepted and stored as
float; never a boolean, never NaN or infinity), ``str`` (optionally one of
``choices``), enums (by value), nested sections (a dataclass, from an object),
``tuple[X, ...]`` (from a list; each item checked against the range), ``dict[str, X]``
(each value checked against the range), ``X | None`` and ``Any`` (taken as given).

A mistyped safety margin must never silently fall back to a default (STYLE.md): an
unknown key is an error listing the allowed ones, and every message names the file, the
key path, the expected type and range, and the value.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any, TypeVar

from guidance.io.validate import InputError, read_json_document

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "KeyDoc",
    "check_fields",
    "describe",
    "load_file",
    "load_section",
    "markdown_table",
    "meta",
    "require_order",
    "setting",
]

T = TypeVar("T")


class ConfigError(InputError):
    """A configuration key or value that is refused.

    The message reads ``file: section.key: detail``; the parts are kept apart so a
    loader can place an error raised inside a section at the section's real path.

    Attributes:
        detail: what is wrong (``expected a number in [0, 50] mm, got -1``).
        key: the key path inside ``section`` (``lateral_caution_mm``, ``fit.seed``,
            ``structures[2].margin_mm``).
        section: the path of the section the key belongs to (``safety``), or empty.
        file: the document it came from, or empty.
    """

    def __init__(self, detail: str, *, key: str = "", section: str = "",
                 file: str = "") -> None:
        self.detail, self.key, self.section, self.file = detail, key, section, file
        super().__init__(": ".join(p for p in (file, self.path, detail) if p))

    @property
    def path(self) -> str:
        """The full key path (``safety.lateral_caution_mm``)."""
        return _join(self.section, self.key)

    def placed(self, *, section: str | None = None, file: str | None = None,
               under: str = "") -> ConfigError:
        """The same error (same class) with its key prefixed by ``under``, its section
        replaced by ``section`` and its file by ``file`` (where not None)."""
        err = type(self)(self.detail, key=_join(under, self.key),
                         section=self.section if section is None else section,
                         file=self.file if file is None else file)
        err.__cause__ = self.__cause__
        return err


class ConfigTypeError(ConfigError, TypeError):
    """A value of the wrong type (also a :class:`TypeError`, for callers that tell a
    wrong type from a wrong value)."""


def _join(*parts: str) -> str:
    out = ""
    for p in parts:
        if p:
            out = p if not out else (out + p if p.startswith("[") else f"{out}.{p}")
    return out


# -- declaring fields -------------------------------------------------------------------


def meta(doc: str, *, unit: str = "", ge: float | None = None, gt: float | None = None,
         le: float | None = None, lt: float | None = None,
         choices: tuple[Any, ...] | None = None, nonempty: bool = False) -> dict[str, Any]:
    """A field's ``metadata``: its one-line description, unit and accepted range.

    Args:
        doc: one line: what it is.
        unit: ``mm``, ``s``, ``deg``, ``px``... (shown in messages and docs).
        ge, gt, le, lt: accepted range of a number (of each item of a tuple or dict).
        choices: the accepted values of a string.
        nonempty: a string, tuple or dict must not be empty.
    """
    return {"doc": doc, "unit": unit, "ge": ge, "gt": gt, "le": le, "lt": lt,
            "choices": choices, "nonempty": nonempty}


def setting(default: Any = MISSING, doc: str = "", **kwargs: Any) -> Any:
    """``dataclasses.field(default=default, metadata=meta(doc, **kwargs))``: a field's
    default and its documentation in one place (``default`` MISSING: required). Mutable
    defaults and sections use ``field(default_factory=..., metadata=meta(...))``."""
    return dataclasses.field(default=default, metadata=meta(doc, **kwargs))


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


def _range_text(meta: Mapping[str, Any]) -> str:
    lo = ("[", meta.get("ge")) if meta.get("ge") is not None else ("(", meta.get("gt"))
    hi = ("]", meta.get("le")) if meta.get("le") is not None else (")", meta.get("lt"))
    if lo[1] is not None and hi[1] is not None:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo[1] is not None:
        return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    if hi[1] is not None:
        return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return ""


def _in_range(v: float, meta: Mapping[str, Any]) -> bool:
    ge, gt, le, lt = (meta.get(k) for k in ("ge", "gt", "le", "lt"))
    return ((ge is None or v >= ge) and (gt is None or v > gt)
            and (le is None or v <= le) and (lt is None or v < lt))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field types of a section (cached: sections are checked on every
    construction)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{cls!r} is not a dataclass")
    return tuple(f for f in dataclasses.fields(cls) if f.init)


# -- checking values --------------------------------------------------------------------


def _is_number(v: object) -> bool:
    import numpy as np

    return (isinstance(v, (int, float, np.integer, np.floating))
            and not isinstance(v, (bool, np.bool_)))


def _describe_type(hint: Any, meta: Mapping[str, Any]) -> str:
    """``a number in [0, 50] mm``, ``an integer >= 1``, ``one of 'us', 'ct'``..."""
    unit = f" {meta['unit']}" if meta.get("unit") else ""
    rng = _range_text(meta)
    rng = f" {rng}" if rng else ""
    origin = typing.get_origin(hint)
    if hint is float:
        return f"a number{rng}{unit}"
    if hint is int:
        return f"an integer{rng}{unit}"
    if hint is bool:
        return "true or false"
    if hint is str:
        choices = meta.get("choices")
        if choices:
            return "one of " + ", ".join(repr(c) for c in choices)
        return "a non-empty string" if meta.get("nonempty") else "a string"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in hint)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return f"an object (section {hint.__name__})"
    if origin is tuple:
        item = _describe_type(typing.get_args(hint)[0], meta)
        return f"a{' non-empty' if meta.get('nonempty') else ''} list of {_plural(item)}"
    if origin is dict:
        item = _describe_type(typing.get_args(hint)[1], meta)
        return f"an object of names to {_plural(item)}"
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        text = " or ".join(_describe_type(a, meta) for a in args)
        return text + " or null" if len(args) < len(typing.get_args(hint)) else text
    if isinstance(hint, type):
        return f"a {hint.__name__}"
    return "any JSON value"


def _plural(text: str) -> str:
    for one, many in (("a number", "numbers"), ("an integer", "integers"),
                      ("a non-empty string", "non-empty strings"), ("a string", "strings"),
                      ("an object", "objects")):
        if text.startswith(one):
            return many + text[len(one):]
    return text


def _got(value: object) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if isinstance(value, bool):
        return f"{text} (a boolean)"
    return text


def _check(hint: Any, value: Any, meta: Mapping[str, Any], key: str) -> Any:
    """``value`` checked against ``hint`` and the field's range; returns it normalised
    (lists as tuples, ints as floats for float fields, mappings as sections)."""
    def wrong_type() -> ConfigTypeError:
        return ConfigTypeError(f"expected {_describe_type(hint, meta)}, got {_got(value)}",
                               key=key)

    def wrong_value() -> ConfigError:
        return ConfigError(f"expected {_describe_type(hint, meta)}, got {_got(value)}",
                           key=key)

    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None and len(args) < len(typing.get_args(hint)):
            return None
        if len(args) == 1:
            return _check(args[0], value, meta, key)
        if all(isinstance(a, type) and a not in (bool, int, float, str) for a in args):
            # A union of plain classes (e.g. IPv4Network | IPv6Network): built in code.
            if isinstance(value, tuple(args)):
                return value
            raise wrong_type()
        raise TypeError(f"{key}: unsupported configuration type {hint!r}")
    if hint is bool:
        if not isinstance(value, bool):
            raise wrong_type()
        return value
    if hint in (int, float):
        if not _is_number(value) or (hint is int and not float(value).is_integer()):
            raise wrong_type()
        if hint is int and isinstance(value, float):
            raise wrong_type()
        v = float(value) if hint is float else int(value)
        if not math.isfinite(v) or not _in_range(v, meta):
            raise wrong_value()
        return v
    if hint is str:
        if not isinstance(value, str):
            raise wrong_type()
        choices = meta.get("choices")
        if (choices and value not in choices) or (meta.get("nonempty") and not value):
            raise wrong_value()
        return value
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        try:
            return hint(value)
        except ValueError:
            raise wrong_value() from None
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        if isinstance(value, Mapping):
            try:
                return load_section(hint, value)
            except ConfigError as e:
                raise e.placed(section="", under=key) from e.__cause__
        raise wrong_type()
    if origin is tuple:
        item_args = typing.get_args(hint)
        if len(item_args) != 2 or item_args[1] is not Ellipsis:
            raise TypeError(f"{key}: unsupported configuration type {hint!r}")
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
            raise wrong_type()
        if meta.get("nonempty") and not value:
            raise wrong_value()
        return tuple(_check(item_args[0], v, meta, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        k_hint, v_hint = typing.get_args(hint)
        if not isinstance(value, Mapping):
            raise wrong_type()
        out = {}
        for k, v in value.items():
            out[_check(k_hint, k, {}, key)] = _check(v_hint, v, meta, _join(key, str(k)))
        return out
    raise TypeError(f"{key}: unsupported configuration type {hint!r}")


def check_fields(obj: object, section: str = "") -> None:
    """Check every field of a section (types, finiteness, ranges, choices) and store
    the normalised values; call it first in ``__post_init__``.

    Args:
        obj: the dataclass instance (frozen or not).
        section: its usual path (``safety``), for messages when built in code; a loader
            replaces it with the path where it found the section.

    Raises:
        ConfigTypeError: a value of the wrong type (naming the key and the value).
        ConfigError: a value out of range, not finite or not among the choices.
    """
    cls = type(obj)
    hints = _hints(cls)
    for f in _fields(cls):
        value = getattr(obj, f.name)
        try:
            checked = _check(hints[f.name], value, f.metadata, f.name)
        except ConfigError as e:
            raise e.placed(section=section) from e.__cause__
        if checked is not value:
            object.__setattr__(obj, f.name, checked)


def require_order(obj: object, section: str, low: str, high: str) -> None:
    """A cross-field check: ``obj.low <= obj.high`` (an INFO threshold below its CAUTION
    one, a contact distance within its caution distance).

    Raises:
        ConfigError: naming ``high``, both values and the unit.
    """
    lo, hi = getattr(obj, low), getattr(obj, high)
    if hi < lo:
        unit = next((f.metadata.get("unit", "") for f in _fields(type(obj))
                     if f.name == low), "")
        unit = f" {unit}" if unit else ""
        raise ConfigError(f"must be >= {low} ({lo:g}{unit}), got {hi!r}", key=high,
                          section=section)


# -- loading ----------------------------------------------------------------------------


def load_section(cls: type[T], data: object, *, path: str = "", file: str = "") -> T:
    """Build the section ``cls`` from a parsed JSON mapping; missing keys take their
    defaults.

    Args:
        cls: a frozen dataclass declared with :func:`setting` fields.
        data: the mapping (a JSON object).
        path: where the section sits in its document (``safety``; empty: the root).
        file: the document's name, for messages.

    Returns:
        The section.

    Raises:
        ConfigError: an unknown key (listing the allowed ones), a value out of range, a
            failed cross-field check; ``ConfigTypeError`` for a wrong type. The message
            names ``file``, the key path and the value.
    """
    if not isinstance(data, Mapping):
        raise ConfigTypeError(f"expected an object (section {cls.__name__}), got "
                              f"{type(data).__name__} {_got(data)}", section=path, file=file)
    fields = {f.name for f in _fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"unknown key (allowed: {', '.join(sorted(fields))})",
                              key=str(key), section=path, file=file)
    try:
        obj = cls(**data)
        check_fields(obj)  # sections without their own __post_init__ are checked too
    except ConfigError as e:
        raise e.placed(section=path, file=file) from e.__cause__
    except (TypeError, ValueError) as e:  # a section's own checks, not yet ConfigError
        kind = ConfigTypeError if isinstance(e, TypeError) else ConfigError
        raise kind(str(e), section=path, file=file) from e
    return obj


def load_file(cls: type[T], file: str | Path, *, path: str = "",
              what: str = "config file") -> T:
    """Read a JSON document strictly (``io.validate.read_json_document``: size, UTF-8,
    NaN, duplicate keys) and build ``cls`` from it (:func:`load_section`)."""
    data = read_json_document(file, what, error=ConfigError)
    return load_section(cls, data, path=path, file=str(file))


# -- documentation ----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyDoc:
    """One key of a configuration: its path, type, default, unit, range and meaning."""

    key: str
    type: str
    default: str
    unit: str
    range: str
    doc: str


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return f"list of {_type_name(typing.get_args(hint)[0])}"
    if origin is dict:
        return f"object of {_type_name(typing.get_args(hint)[1])}"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if hint is Any:
        return "any"
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return "string"
    return {float: "number", int: "integer", bool: "boolean", str: "string"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _default_text(f: dataclasses.Field[Any]) -> str:
    if f.default is not MISSING:
        value = f.default
    elif f.default_factory is not MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple) and value and dataclasses.is_dataclass(value[0]):
        return f"{len(value)} entries"
    if isinstance(value, tuple):
        return "[" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v)
                               for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return "{}" if not value else f"{{{len(value)} keys}}"
    return str(value)


def describe(cls: type, prefix: str = "") -> list[KeyDoc]:
    """Every key of a section (nested sections and list items expanded, as
    ``ct_scan.fit.seed`` and ``structures.structures[].margin_mm``) with its default,
    unit, range and description."""
    out = []
    hints = _hints(cls)
    for f in _fields(cls):
        hint, key = hints[f.name], _join(prefix, f.name)
        origin = typing.get_origin(hint)
        item = typing.get_args(hint)[0] if origin is tuple else None
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            out.extend(describe(hint, key))
            continue
        meta = f.metadata
        rng = _range_text(meta)
        if meta.get("choices"):
            rng = ", ".join(str(c) if c else '""' for c in meta["choices"])
        elif isinstance(hint, type) and issubclass(hint, enum.Enum):
            rng = ", ".join(str(m.value) for m in hint)
        out.append(KeyDoc(key, _type_name(hint), _default_text(f), meta.get("unit", ""),
                          rng, meta.get("doc", "")))
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            out.extend(describe(item, key + "[]"))
    return out


def markdown_table(cls: type, prefix: str = "") -> str:
    """:func:`describe` as a Markdown table (``docs/CONFIG.md``)."""
    rows = ["| key | type | default | unit | range | meaning |",
            "| --- | --- | --- | --- | --- | --- |"]
    for d in describe(cls, prefix):
        cells = [f"`{d.key}`", d.type, d.default, d.unit, d.range, d.doc]
        rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(rows) + "\n"
