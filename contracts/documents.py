"""Shared base for frozen, strict documents (policies, fleet manifests) and their errors.

Documents come from people and from files anyone with write access to the state directory
can edit, so the loader is defensive (docs/security.md): a document is at most
``MAX_DOCUMENT_BYTES`` of UTF-8, nests at most ``MAX_DOCUMENT_DEPTH`` levels, uses no YAML
aliases (``*name``: the "billion laughs" expansion), repeats no key in a mapping, and holds
no NaN or infinite number. Whatever the input (binary garbage, a bomb, a number of 5,000
digits, an impossible date), the loader returns the model or raises ``DocumentError``
naming the problem; its messages quote values shortened, never serialised whole.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "MAX_DOCUMENT_BYTES",
    "MAX_DOCUMENT_DEPTH",
    "MAX_DOCUMENT_NODES",
    "DocumentError",
    "Strict",
    "canonical_json",
    "content_hash",
    "diff_values",
    "dump_yaml",
    "load_yaml_document",
]

M = TypeVar("M", bound=BaseModel)

#: The largest document the loader reads (a policy or a manifest is a few KiB; a YAML gate
#: suite of the reference size about 100 KiB).
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
#: The deepest nesting of mappings and lists (a policy nests 5 levels).
MAX_DOCUMENT_DEPTH = 64
#: The most values (mappings, lists, scalars, keys included) in one document: the pure-Python
#: parser spends a few seconds and ~100 MiB on 100,000 (the reference suite has ~7,500).
MAX_DOCUMENT_NODES = 100_000
# The longest scalar read as a number: longer ones would only cost time (``1:2:3:...`` is
# a base-60 integer, quadratic to build) and no document field needs them.
_MAX_NUMBER_CHARS = 100
_MAX_PROBLEMS_SHOWN = 50
_MAX_MESSAGE_CHARS = 500
_MAX_PATH_CHARS = 200


class Strict(BaseModel):
    """Frozen and strict: unknown fields are refused, values never change after load."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class DocumentError(ValueError):
    """A document (policy, manifest) was refused. Every problem names its field and value.

    ``problems`` is a list of ``(field_path, message)``; ``str()`` lists them one a line
    (at most 50, each shortened: a refusal never grows with the document).
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = _clip(str(source), _MAX_PATH_CHARS)
        self.problems = [(_clip(str(p), _MAX_PATH_CHARS), _clip(str(m), _MAX_MESSAGE_CHARS))
                         for p, m in problems]
        lines = [f"{self.source}: {len(self.problems)} problem(s)"]
        lines += [f"  {path}: {msg}" for path, msg in self.problems[:_MAX_PROBLEMS_SHOWN]]
        if len(self.problems) > _MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(self.problems) - _MAX_PROBLEMS_SHOWN} more")
        super().__init__("\n".join(lines))

    @classmethod
    def from_validation(cls, source: str, err: ValidationError) -> DocumentError:
        problems = []
        for e in err.errors():
            path = ".".join(str(p) for p in e["loc"]) or "<document>"
            value = e.get("input")
            shown = _short(value)
            if e["type"] == "extra_forbidden":
                msg = f"unknown field (got {shown})"
            elif e["type"] == "missing":
                msg = "required field is missing"
            else:
                msg = f"{e['msg']} (got {shown})"
            problems.append((path, msg))
        return cls(source, problems)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _short(value: Any, limit: int = 80) -> str:
    """``value`` as JSON (a string as its repr), cut at ``limit`` characters. The work is
    bounded by ``limit``, not by the size of ``value``: the encoder is read lazily."""
    if isinstance(value, str):
        return _clip(repr(value[: limit + 1]), limit)
    out: list[str] = []
    size = 0
    try:
        for chunk in json.JSONEncoder(default=str, ensure_ascii=False).iterencode(value):
            out.append(chunk[: limit + 1])
            size += len(out[-1])
            if size > limit:
                break
    except (ValueError, TypeError, RecursionError):  # circular or unencodable: say what
        return f"<{type(value).__name__}>"
    return _clip("".join(out), limit)


def canonical_json(data: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 kept. Equal data -> equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()


class _Refused(Exception):
    """A problem the loader found, as ``(field, message)`` for ``DocumentError``."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "?"


class _DocumentLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` without aliases, duplicate keys, deep nesting, more than so many
    values or huge numbers. Limits are checked as the parser goes: a refusal comes before
    the parser has spent more than the limit."""

    def __init__(self, stream: str, max_depth: int, max_nodes: int):
        super().__init__(stream)
        self._max_depth = max_depth
        self._max_nodes = max_nodes
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _Refused("<yaml>", (
                f"YAML aliases are not accepted (*{_clip(str(event.anchor), 40)} at "
                f"{_where(event.start_mark)}): write the value out"))
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > self._max_depth:
                event = self.peek_event()
                raise _Refused("<yaml>", (
                    f"nested deeper than {self._max_depth} levels (at "
                    f"{_where(event.start_mark)})"))
            if self._nodes > self._max_nodes:
                event = self.peek_event()
                raise _Refused("<yaml>", (
                    f"more than {self._max_nodes} values (at {_where(event.start_mark)})"))
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or \
                        key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # unhashable: the constructor below refuses it
                    continue
                if duplicate:
                    raise _Refused("<yaml>", (
                        f"key {_short(key, 60)} appears twice in one mapping (again at "
                        f"{_where(key_node.start_mark)})"))
        return super().construct_mapping(node, deep=deep)

    def _number(self, node: Any) -> None:
        if isinstance(node, yaml.ScalarNode) and len(node.value) > _MAX_NUMBER_CHARS:
            raise _Refused("<yaml>", (
                f"a number of {len(node.value)} characters at {_where(node.start_mark)} "
                f"(at most {_MAX_NUMBER_CHARS})"))

    def construct_yaml_int(self, node: Any) -> int:
        self._number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Any) -> float:
        self._number(node)
        return super().construct_yaml_float(node)


_DocumentLoader.add_constructor("tag:yaml.org,2002:int", _DocumentLoader.construct_yaml_int)
_DocumentLoader.add_constructor("tag:yaml.org,2002:float", _DocumentLoader.construct_yaml_float)


def _non_finite(data: Any, path: str = "") -> tuple[str, float] | None:
    """The first NaN or infinite number in ``data`` (nesting is already bounded)."""
    if isinstance(data, float) and not math.isfinite(data):
        return path or "<document>", data
    if isinstance(data, dict):
        for key, value in data.items():
            found = _non_finite(value, f"{path}.{key}" if path else str(key))
            if found:
                return found
    elif isinstance(data, list):
        for i, value in enumerate(data):
            found = _non_finite(value, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


def _parse_yaml(text: str, source: str, *, max_depth: int = MAX_DOCUMENT_DEPTH,
                max_nodes: int = MAX_DOCUMENT_NODES) -> Any:
    """The data of one YAML document, or ``DocumentError`` (never another exception)."""
    loader = None
    try:
        loader = _DocumentLoader(text, max_depth, max_nodes)  # refuses unprintable text
        return loader.get_single_data()
    except _Refused as exc:
        raise DocumentError(source, [(exc.field, exc.message)]) from None
    except yaml.YAMLError as exc:
        raise DocumentError(source, [("<yaml>", f"not valid YAML: {exc}")]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # A scalar the constructors cannot build: an impossible date, a bad !!binary, ...
        raise DocumentError(source, [("<yaml>", f"cannot read a value: {exc}")]) from None
    finally:
        if loader is not None:
            loader.dispose()


def _is_path(value: str) -> bool:
    if "\n" in value or "\x00" in value or not value:
        return False
    try:
        return Path(value).exists()
    except (OSError, ValueError):  # a name too long, or not a name at all: it is text
        return False


def _read_limited(path: Path, source: str, max_bytes: int) -> bytes:
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise DocumentError(source, [("<file>", "not a regular file")])
        with open(path, "rb") as fh:
            data = fh.read(max_bytes + 1)
    except OSError as exc:
        raise DocumentError(source, [("<file>", f"cannot read: {exc}")]) from None
    return data


def load_yaml_document(model: type[M], path_or_text: str | bytes | Path, *,
                       source: str | None = None, max_bytes: int = MAX_DOCUMENT_BYTES,
                       max_depth: int = MAX_DOCUMENT_DEPTH,
                       max_nodes: int = MAX_DOCUMENT_NODES) -> M:
    """Parse YAML (a path, the text itself, or its UTF-8 bytes) into ``model``; refuse it
    with ``DocumentError`` naming the field (or the reason it could not be read)."""
    raw: bytes | str
    if isinstance(path_or_text, Path) or (
            isinstance(path_or_text, str) and _is_path(path_or_text)):
        path = Path(path_or_text)
        source = source or str(path)
        raw = _read_limited(path, source, max_bytes)
    elif isinstance(path_or_text, bytes | bytearray):
        source = source or "<bytes>"
        raw = bytes(path_or_text)
    else:
        source = source or "<text>"
        raw = str(path_or_text)
    if len(raw) > max_bytes or (  # a character is at least one byte of UTF-8
            isinstance(raw, str) and len(raw.encode("utf-8", "surrogatepass")) > max_bytes):
        raise DocumentError(source, [("<document>", (
            f"larger than {max_bytes} bytes: not a document this product reads"))])
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DocumentError(source, [("<file>", (
                f"not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"))]
            ) from None
    else:
        text = raw
    data = _parse_yaml(text, source, max_depth=max_depth, max_nodes=max_nodes)
    if not isinstance(data, dict):
        raise DocumentError(source, [("<document>", f"expected a mapping (got {_short(data)})")])
    bad = _non_finite(data)
    if bad:
        raise DocumentError(source, [(bad[0], f"must be a finite number (got {bad[1]})")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DocumentError.from_validation(source, exc) from None
    except (ValueError, TypeError, RecursionError) as exc:  # a validator's own slip
        raise DocumentError(source, [("<document>", f"refused: {exc}")]) from None


class _NoAliasDumper(yaml.SafeDumper):
    """Writes every value out: what ``dump_yaml`` writes, ``load_yaml_document`` reads."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(model: BaseModel) -> str:
    data = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=False, allow_unicode=True)


def diff_values(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-level differences between two JSON-like values as ``(path, old, new)``.

    A missing key is reported with ``None`` on its side; lists compare as whole values, since
    an escalation order ``[S, M] -> [S, M, L]`` reads best as one change.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[tuple[str, Any, Any]] = []
        for key in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old:
                out.append((sub, None, new[key]))
            elif key not in new:
                out.append((sub, old[key], None))
            else:
                out.extend(diff_values(old[key], new[key], sub))
        return out
    return [] if old == new else [(path, old, new)]
