"""Shared base for frozen, strict documents (policies, fleet manifests) and their errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "DocumentError",
    "Strict",
    "canonical_json",
    "content_hash",
    "diff_values",
    "dump_yaml",
    "load_yaml_document",
]

M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    """Frozen and strict: unknown fields are refused, values never change after load."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class DocumentError(ValueError):
    """A document (policy, manifest) was refused. Every problem names its field and value.

    ``problems`` is a list of ``(field_path, message)``; ``str()`` lists them one a line.
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem(s)"]
        lines += [f"  {path}: {msg}" for path, msg in problems]
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


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def canonical_json(data: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 kept. Equal data -> equal text."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(data: Any) -> str:
    return hashlib.sha256(canonical_json(data).encode("utf-8")).hexdigest()


def load_yaml_document(model: type[M], path_or_text: str | Path, *, source: str | None = None) -> M:
    """Parse YAML (a path or the text itself) into ``model``; refuse with named fields."""
    if isinstance(path_or_text, Path) or (
        isinstance(path_or_text, str) and "\n" not in path_or_text and Path(path_or_text).exists()
    ):
        path = Path(path_or_text)
        source = source or str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DocumentError(source, [("<file>", f"cannot read: {exc}")]) from exc
    else:
        text = str(path_or_text)
        source = source or "<text>"
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DocumentError(source, [("<yaml>", f"not valid YAML: {exc}")]) from exc
    if not isinstance(data, dict):
        raise DocumentError(source, [("<document>", f"expected a mapping (got {_short(data)})")])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise DocumentError.from_validation(source, exc) from None


def dump_yaml(model: BaseModel) -> str:
    data = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


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
