"""A small JSON Schema (draft-04) interpreter: enough for the OCI runtime schemas.

The runtime must not depend on ``jsonschema``, so this module interprets the
subset of draft-04 the OCI schema files use, and a little more: ``type``,
``enum``, ``const``, ``properties``, ``patternProperties``,
``additionalProperties``, ``required``, ``minProperties``/``maxProperties``,
``dependencies``, ``items`` (one schema or a tuple), ``additionalItems``,
``minItems``/``maxItems``, ``uniqueItems``, ``pattern``,
``minLength``/``maxLength``, ``minimum``/``maximum`` with draft-04 boolean
``exclusiveMinimum``/``exclusiveMaximum``, ``multipleOf``, ``allOf``,
``anyOf``, ``oneOf``, ``not`` and ``$ref`` (JSON pointers, within a document
or into a sibling file, resolved by a ``loader`` callable).

Draft-04 rules kept on purpose, because the verdicts must equal
``jsonschema.Draft4Validator``'s (tests/unit/test_oci_config.py checks it):
``integer`` excludes floats such as ``1.0`` and booleans; ``number`` excludes
booleans; a schema with ``$ref`` ignores its other keywords; ``enum`` and
``uniqueItems`` compare JSON values (``true`` is not ``1``).

Each error names where it is, as a path readable by people
(``linux.namespaces[1].type``), and what is wrong.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Any, Callable, Iterator, NamedTuple

Loader = Callable[[str], dict]


class SchemaError(NamedTuple):
    """One way an instance fails its schema."""

    path: tuple[str | int, ...]
    message: str

    @property
    def where(self) -> str:
        """``process.args[0]``; ``(root)`` for the document itself."""
        out = ""
        for part in self.path:
            if isinstance(part, int):
                out += f"[{part}]"
            else:
                out += ("." if out else "") + part
        return out or "(root)"

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


_JSON_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def json_type(value: Any) -> str:
    """The JSON type name of a decoded JSON value."""
    return _JSON_TYPE_NAMES.get(type(value), type(value).__name__)


def _is_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if name == "null":
        return value is None
    if name == "any":
        return True
    return False


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: booleans are not numbers, 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


@lru_cache(maxsize=512)
def _regex(pattern: str) -> re.Pattern:
    # ECMA-262 and Python regexes agree on everything the OCI schemas use.
    return re.compile(pattern)


def _short(value: Any) -> str:
    text = repr(value) if not isinstance(value, str) else '"' + value + '"'
    return text if len(text) <= 60 else text[:57] + "..."


class Validator:
    """Validates instances against schema documents fetched by ``loader(name)``.

    ``loader`` returns the parsed document of a schema file name such as
    ``"defs.json"``; documents are looked up once and kept.
    """

    def __init__(self, loader: Loader) -> None:
        self._loader = loader
        self._docs: dict[str, dict] = {}

    # --- documents and references ------------------------------------------
    def _doc(self, name: str) -> dict:
        if name not in self._docs:
            self._docs[name] = self._loader(name)
        return self._docs[name]

    def _resolve(self, ref: str, base: str) -> tuple[dict, str]:
        """(schema, document name) that ``ref`` points at from document ``base``."""
        file_part, _, pointer = ref.partition("#")
        doc_name = file_part or base
        node: Any = self._doc(doc_name)
        for raw in pointer.split("/")[1:] if pointer else []:
            token = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, list):
                node = node[int(token)]
            elif isinstance(node, dict) and token in node:
                node = node[token]
            else:
                raise KeyError(f"unresolvable $ref {ref!r} in {base}")
        return node, doc_name

    # --- public --------------------------------------------------------------
    def errors(self, instance: Any, schema_name: str) -> list[SchemaError]:
        """Every error of ``instance`` against the whole document ``schema_name``."""
        return list(self._check(instance, self._doc(schema_name), schema_name, ()))

    def first_error(self, instance: Any, schema_name: str) -> SchemaError | None:
        """The first error found, or None when ``instance`` is valid."""
        return next(self._check(instance, self._doc(schema_name), schema_name, ()), None)

    def is_valid(self, instance: Any, schema_name: str) -> bool:
        return self.first_error(instance, schema_name) is None

    # --- the interpreter -----------------------------------------------------
    def _valid(self, instance: Any, schema: Any, base: str) -> bool:
        return next(self._check(instance, schema, base, ()), None) is None

    def _check(self, inst: Any, schema: Any, base: str, path: tuple) -> Iterator[SchemaError]:
        if schema is True or schema == {}:
            return
        if schema is False:
            yield SchemaError(path, "no value is allowed here")
            return
        if "$ref" in schema:
            # Draft-04: a $ref replaces the whole schema it sits in.
            target, doc = self._resolve(schema["$ref"], base)
            yield from self._check(inst, target, doc, path)
            return

        if "type" in schema:
            wanted = schema["type"]
            names = wanted if isinstance(wanted, list) else [wanted]
            if not any(_is_type(inst, n) for n in names):
                yield SchemaError(path, f"expected {' or '.join(names)}, got {json_type(inst)}")
                return  # the other keywords would only repeat the mismatch

        if "enum" in schema and not any(json_equal(inst, v) for v in schema["enum"]):
            shown = ", ".join(_short(v) for v in schema["enum"])
            yield SchemaError(path, f"{_short(inst)} is not one of: {shown}")
        if "const" in schema and not json_equal(inst, schema["const"]):
            yield SchemaError(path, f"must be {_short(schema['const'])}")

        if isinstance(inst, dict):
            yield from self._check_object(inst, schema, base, path)
        elif isinstance(inst, list):
            yield from self._check_array(inst, schema, base, path)
        elif isinstance(inst, str):
            yield from self._check_string(inst, schema, path)
        elif isinstance(inst, (int, float)) and not isinstance(inst, bool):
            yield from self._check_number(inst, schema, path)

        for i, sub in enumerate(schema.get("allOf", ())):
            yield from self._check(inst, sub, base, path)
        if "anyOf" in schema:
            yield from self._check_any_of(inst, schema["anyOf"], base, path)
        if "oneOf" in schema:
            matches = [i for i, sub in enumerate(schema["oneOf"]) if self._valid(inst, sub, base)]
            if not matches:
                yield from self._check_any_of(inst, schema["oneOf"], base, path)
            elif len(matches) > 1:
                yield SchemaError(path, f"matches more than one allowed form (forms {matches})")
        if "not" in schema and self._valid(inst, schema["not"], base):
            yield SchemaError(path, "matches a form that is not allowed")

    def _check_any_of(self, inst: Any, subs: list, base: str, path: tuple) -> Iterator[SchemaError]:
        found = []
        for sub in subs:
            first = next(self._check(inst, sub, base, path), None)
            if first is None:
                return
            found.append(first)
        if len(found) == 1:
            yield found[0]  # a lone alternative: its own error is the clearest
            return
        # The error that got deepest into the instance is the likeliest intent.
        best = max(found, key=lambda e: len(e.path))
        if len(best.path) > len(path):
            yield best
        else:
            yield SchemaError(path, "does not match any allowed form")

    def _check_object(self, inst: dict, schema: dict, base: str, path: tuple) -> Iterator[SchemaError]:
        for name in schema.get("required", ()):
            if name not in inst:
                yield SchemaError(path, f'missing required property "{name}"')
        if "minProperties" in schema and len(inst) < schema["minProperties"]:
            yield SchemaError(path, f"must have at least {schema['minProperties']} properties")
        if "maxProperties" in schema and len(inst) > schema["maxProperties"]:
            yield SchemaError(path, f"must have at most {schema['maxProperties']} properties")

        props = schema.get("properties", {})
        patterns = schema.get("patternProperties", {})
        additional = schema.get("additionalProperties", True)
        for key, value in inst.items():
            matched = False
            if key in props:
                matched = True
                yield from self._check(value, props[key], base, path + (key,))
            for pattern, sub in patterns.items():
                if _regex(pattern).search(key):
                    matched = True
                    yield from self._check(value, sub, base, path + (key,))
            if not matched:
                if additional is False:
                    yield SchemaError(path + (key,), "unknown property")
                elif isinstance(additional, dict):
                    yield from self._check(value, additional, base, path + (key,))

        for key, dep in schema.get("dependencies", {}).items():
            if key not in inst:
                continue
            if isinstance(dep, list):
                for other in dep:
                    if other not in inst:
                        yield SchemaError(path, f'"{key}" requires property "{other}"')
            else:
                yield from self._check(inst, dep, base, path)

    def _check_array(self, inst: list, schema: dict, base: str, path: tuple) -> Iterator[SchemaError]:
        if "minItems" in schema and len(inst) < schema["minItems"]:
            yield SchemaError(path, f"must have at least {schema['minItems']} item(s)")
        if "maxItems" in schema and len(inst) > schema["maxItems"]:
            yield SchemaError(path, f"must have at most {schema['maxItems']} item(s)")
        if schema.get("uniqueItems"):
            for i, item in enumerate(inst):
                if any(json_equal(item, other) for other in inst[:i]):
                    yield SchemaError(path + (i,), "duplicate item")
                    break
        items = schema.get("items", True)
        if isinstance(items, list):
            for i, (item, sub) in enumerate(zip(inst, items)):
                yield from self._check(item, sub, base, path + (i,))
            extra = schema.get("additionalItems", True)
            if len(inst) > len(items):
                if extra is False:
                    yield SchemaError(path, f"must have at most {len(items)} item(s)")
                elif isinstance(extra, dict):
                    for i in range(len(items), len(inst)):
                        yield from self._check(inst[i], extra, base, path + (i,))
        else:
            for i, item in enumerate(inst):
                yield from self._check(item, items, base, path + (i,))

    def _check_string(self, inst: str, schema: dict, path: tuple) -> Iterator[SchemaError]:
        # Lengths count code points, as JSON Schema says.
        if "minLength" in schema and len(inst) < schema["minLength"]:
            yield SchemaError(path, f"must be at least {schema['minLength']} character(s) long")
        if "maxLength" in schema and len(inst) > schema["maxLength"]:
            yield SchemaError(path, f"must be at most {schema['maxLength']} character(s) long")
        if "pattern" in schema and not _regex(schema["pattern"]).search(inst):
            yield SchemaError(path, f"{_short(inst)} does not match {schema['pattern']}")

    def _check_number(self, inst: int | float, schema: dict, path: tuple) -> Iterator[SchemaError]:
        if "minimum" in schema:
            low = schema["minimum"]
            if schema.get("exclusiveMinimum") is True:
                if not inst > low:
                    yield SchemaError(path, f"{inst} must be greater than {low}")
            elif not inst >= low:
                yield SchemaError(path, f"{inst} is less than the minimum {low}")
        if "maximum" in schema:
            high = schema["maximum"]
            if schema.get("exclusiveMaximum") is True:
                if not inst < high:
                    yield SchemaError(path, f"{inst} must be less than {high}")
            elif not inst <= high:
                yield SchemaError(path, f"{inst} is greater than the maximum {high}")
        if "multipleOf" in schema:
            step = schema["multipleOf"]
            if isinstance(inst, int) and isinstance(step, int):
                bad = inst % step != 0
            else:
                quotient = inst / step
                bad = not (math.isfinite(quotient) and quotient == int(quotient))
            if bad:
                yield SchemaError(path, f"{inst} is not a multiple of {step}")
