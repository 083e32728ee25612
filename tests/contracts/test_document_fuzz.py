"""Standing fuzz suite (issue 14): policy, fleet and settings loading on generated input.

Property: whatever the bytes or the YAML, ``load_yaml_document`` returns the model or
raises ``DocumentError`` (the product's own refusal, with a bounded message), and does so
in bounded time. Derandomised with a bounded number of examples, so CI runs the same cases
every time and the suite stays fast.
"""

from __future__ import annotations

import copy
import math
import re
import time
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.documents import DocumentError, load_yaml_document
from contracts.manifest import FleetManifest
from controlplane.settings import Settings
from policies.policy import Policy

STARTER = Path(__file__).resolve().parents[2] / "controlplane" / "starter"
MODELS = {"policy": Policy, "fleet": FleetManifest, "settings": Settings}
VALID = {
    "policy": yaml.safe_load((STARTER / "policy.yaml").read_text(encoding="utf-8")),
    "fleet": yaml.safe_load((STARTER / "fleet.yaml").read_text(encoding="utf-8")),
    "settings": yaml.safe_load((STARTER / "autopilot.yaml").read_text(encoding="utf-8")),
}
SECONDS_PER_LOAD = 5.0

FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def load_or_refuse(kind: str, doc: str | bytes) -> Any:
    """The property: a model, or DocumentError with a bounded message, quickly; a model
    that loads holds only finite numbers, and a policy a version the store can hold."""
    start = time.monotonic()
    try:
        result = load_yaml_document(MODELS[kind], doc)
    except DocumentError as err:
        assert len(str(err)) < 60_000
        result = err
    assert time.monotonic() - start < SECONDS_PER_LOAD
    if not isinstance(result, DocumentError):
        assert all_finite(result.model_dump(mode="python")), result
        if isinstance(result, Policy):
            assert result.metadata.version <= 2**31 - 1
    return result


def all_finite(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(all_finite(v) for v in value)
    return True


KINDS = st.sampled_from(sorted(MODELS))

# Pieces of YAML syntax, joined at random: aliases, anchors, tags, flow and block
# collections, merge keys, special floats, dates, directives, odd quoting.
FRAGMENTS = st.sampled_from([
    "- ", ": ", "? ", "[", "]", "{", "}", ", ", "\n", "  ", "    ", "#c", "---", "...",
    "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "&a ", "*a", "&b ", "*b", "<<: ", "!!str ",
    "!!int ", "!!float ", "!!binary ", "!!timestamp ", "!!set ", "!!omap ", "!!python/name:os.system ",
    "!x ", "|", ">", "'", '"', "\\", ".nan", ".inf", "-.inf", "1e9", "1.0e+999", "0x1F", "0o7",
    "1:2:3", "2026-01-01", "2026-13-45T99:00:00Z", "~", "null", "true", "yes", "0", "-1",
    "2147483648", "99999999999999999999", "apiVersion", "autopilot/v1", "kind", "Policy",
    "metadata", "spec", "version", "routing", "escalation", "S", "M", "L", "tiers",
    "store_url", "\t", "\x00", "\x85", "\ufeff", "\u2028", "é",
])
YAML_SOUP = st.lists(FRAGMENTS, max_size=60).map("".join)

SCALARS = (st.none() | st.booleans() | st.integers() | st.text(max_size=20)
           | st.floats(allow_nan=True, allow_infinity=True)
           | st.dates() | st.datetimes())
JSONISH = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=10) | st.integers(), inner, max_size=5),
    max_leaves=30,
)


def paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(data, dict):
        for k, v in data.items():
            out += paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out += paths(v, (*prefix, i))
    return out


def mutate(data: Any, path: tuple, action: str, value: Any) -> Any:
    data = copy.deepcopy(data)
    if not path:
        return value
    parent = data
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict):
        parent[f"extra_{len(parent)}"] = value
    else:
        parent.append(value)
    return data


@FUZZ
@given(KINDS, st.binary(max_size=3000))
def test_arbitrary_bytes_are_loaded_or_refused(kind, data):
    load_or_refuse(kind, data)


@FUZZ
@given(KINDS, st.text(max_size=500))
def test_arbitrary_text_is_loaded_or_refused(kind, text):
    load_or_refuse(kind, "\n" + text)  # a newline: always text, never a file name


@FUZZ
@given(KINDS, YAML_SOUP)
def test_yaml_syntax_soup_is_loaded_or_refused(kind, text):
    load_or_refuse(kind, text + "\n")


@FUZZ
@given(KINDS, JSONISH)
def test_any_yaml_value_is_loaded_or_refused(kind, value):
    text = yaml.safe_dump(value, allow_unicode=True)
    load_or_refuse(kind, text if "\n" in text else text + "\n")


@FUZZ
@given(KINDS, st.data())
def test_valid_documents_with_one_change_are_loaded_or_refused(kind, data):
    base = VALID[kind]
    path = data.draw(st.sampled_from(paths(base)))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if action == "delete" and not path:
        action = "replace"
    if action == "add" and not isinstance(_at(base, path), dict | list):
        action = "replace"
    doc = mutate(base, path, action, data.draw(JSONISH))
    result = load_or_refuse(kind, yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))
    if isinstance(result, DocumentError):
        assert result.problems and all(isinstance(p, str) for p, _ in result.problems)


def _at(data: Any, path: tuple) -> Any:
    for key in path:
        data = data[key]
    return data


@FUZZ
@given(KINDS, st.data())
def test_valid_documents_with_hostile_yaml_spliced_in_are_loaded_or_refused(kind, data):
    lines = (STARTER / {"policy": "policy.yaml", "fleet": "fleet.yaml",
                        "settings": "autopilot.yaml"}[kind]).read_text().splitlines()
    at = data.draw(st.integers(0, len(lines)))
    lines.insert(at, data.draw(YAML_SOUP))
    load_or_refuse(kind, "\n".join(lines) + "\n")


# Scalars and flow values written straight into the YAML text in place of a value: what a
# hand-edited or hostile document can hold that a dumped one never does.
HOSTILE_VALUES = st.one_of(
    st.sampled_from([
        ".nan", ".inf", "-.inf", "1.0e+999", "2026-13-45", "2026-02-30T00:00:00Z",
        "!!timestamp 2026-99-99", "!!int x", "!!float y", "!!binary '@@'", "!!set {a, b}",
        "!!python/object/apply:os.system [id]", "!!omap [a, b]", "&x [1, 2]", "*x",
        "{a: 1, a: 2}", "[*undefined]", "2147483648", "9223372036854775808", "-1",
        "{<<: {a: 1}}", "'\\x00'", '"\\ud800"', "1:2:3:4:5", "0x" + "f" * 30,
    ]),
    st.integers(60, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(60, 3000).map(lambda n: "{a: " * n + "1" + "}" * n),
    st.integers(100, 6000).map(lambda n: "9" * n),
    st.integers(2, 60).map(lambda n: ":".join(["1"] + ["59"] * n * 100)),
    st.integers(1, 12).map(lambda n: "&a [" + ", ".join(["x"] * n) + "]"),
    st.integers(1, 9999).map(lambda n: f"2026-{n % 100:02d}-{n // 100:02d}"),
    st.integers(0, 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr).map(
        lambda r: {"nan": ".nan", "inf": ".inf", "-inf": "-.inf"}.get(r, r)),
)
VALUE_LINE = re.compile(r"^(\s*(?:- )?[A-Za-z_][A-Za-z0-9_]*: )(\S.*)$")


@FUZZ
@given(KINDS, st.data())
def test_valid_documents_with_one_hostile_value_are_loaded_or_refused(kind, data):
    text = yaml.safe_dump(VALID[kind], sort_keys=False, default_flow_style=False)
    lines = text.splitlines()
    slots = [i for i, line in enumerate(lines) if VALUE_LINE.match(line)]
    at = data.draw(st.sampled_from(slots))
    head = VALUE_LINE.match(lines[at]).group(1)
    lines[at] = head + data.draw(HOSTILE_VALUES)
    load_or_refuse(kind, "\n".join(lines) + "\n")


def test_the_unchanged_documents_load():
    for kind, doc in VALID.items():
        result = load_or_refuse(kind, yaml.safe_dump(doc, sort_keys=False))
        assert isinstance(result, MODELS[kind]), result
