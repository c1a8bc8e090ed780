"""The three PATCH dialects a Kubernetes API server accepts, applied to plain JSON values.

JSON merge patch (RFC 7386) and JSON patch (RFC 6902) are generic. Strategic merge patch is
Kubernetes' own: lists named in the kind's schema merge by a key (`ports` by `port`,
`conditions` by `type`) or as sets (`finalizers`), every other list is replaced, and the
`$patch`, `$deleteFromPrimitiveList/`, `$setElementOrder/` and `$retainKeys` directives work.
The official Python client sends strategic merge patches for dict bodies, so a controller's
status writes go through this code. Functions here are pure: they never mutate their inputs
and know nothing of storage or HTTP; a malformed patch raises `PatchError`.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

# A list strategy for a path of map keys: None (replace), ("set",) or ("merge", key).
ListStrategy = tuple[str, ...] | None
Schema = Callable[[tuple[str, ...]], ListStrategy]

_DELETE = object()


class PatchError(ValueError):
    """The patch is well-formed JSON but cannot be applied to this object."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: maps merge recursively, `null` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- RFC 6902 -------------------------------------------------------------------------------


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], token: str, *, for_add: bool) -> int:
    if for_add and token == "-":  # noqa: S105 - JSON pointer "append", not a secret
        return len(container)
    if not token.isdigit():
        raise PatchError(f"invalid array index {token!r}")
    index = int(token)
    limit = len(container) if for_add else len(container) - 1
    if index > limit:
        raise PatchError(f"array index {index} out of bounds")
    return index


def _parent(doc: Any, tokens: list[str]) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node:
                raise PatchError(f"path segment {token!r} does not exist")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, for_add=False)]
        else:
            raise PatchError(f"path segment {token!r} is not a container")
    return node


def _get(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        return doc
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"path {'/'.join(tokens)!r} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, for_add=False)]
    raise PatchError("target is not a container")


def _add(doc: Any, tokens: list[str], value: Any) -> Any:
    if not tokens:
        return value
    parent = _parent(doc, tokens)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, for_add=True), value)
    else:
        raise PatchError("target is not a container")
    return doc


def _remove(doc: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise PatchError("cannot remove the whole document")
    _get(doc, tokens)
    parent = _parent(doc, tokens)
    if isinstance(parent, dict):
        del parent[tokens[-1]]
    else:
        del parent[_index(parent, tokens[-1], for_add=False)]
    return doc


def _apply_operation(doc: Any, op: dict[str, Any]) -> Any:
    kind = op.get("op")
    tokens = _pointer(str(op.get("path", "")))
    if kind == "add":
        return _add(doc, tokens, copy.deepcopy(op.get("value")))
    if kind == "remove":
        return _remove(doc, tokens)
    if kind == "replace":
        _get(doc, tokens)
        return _add(_remove(doc, tokens) if tokens else doc, tokens, copy.deepcopy(op.get("value")))
    if kind in ("move", "copy"):
        source = _pointer(str(op.get("from", "")))
        value = copy.deepcopy(_get(doc, source))
        if kind == "move":
            doc = _remove(doc, source)
        return _add(doc, tokens, value)
    if kind == "test":
        if _get(doc, tokens) != op.get("value"):
            raise PatchError(f"testing value {op.get('path')} failed")
        return doc
    raise PatchError(f"Unexpected kind: {kind}")


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902: apply the operations in order to a copy; any failure rejects the whole patch."""
    if not isinstance(operations, list):
        raise PatchError("a JSON patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict):
            raise PatchError("each JSON patch operation must be an object")
        doc = _apply_operation(doc, op)
    return doc


# --- strategic merge patch ------------------------------------------------------------------


def _strip(value: Any) -> Any:
    """Copy a patch value into the result, dropping directives it may carry."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and "$patch" in v)]
    return copy.deepcopy(value)


def _merge_keyed(
    original: list[Any], patch: list[Any], key: str, schema: Schema, path: tuple[str, ...]
) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    result = list(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map: {item!r} does not contain declared merge key: {key}")
        where = [
            i for i, old in enumerate(result) if isinstance(old, dict) and old.get(key) == item[key]
        ]
        if item.get("$patch") == "delete":
            result = [old for i, old in enumerate(result) if i not in where]
        elif where:
            result[where[0]] = _merge_map(result[where[0]], item, schema, path)
        else:
            result.append(_strip(item))
    return result


def _merge_set(original: list[Any], patch: list[Any]) -> list[Any]:
    result = list(original)
    for item in patch:
        if item not in result:
            result.append(copy.deepcopy(item))
    return result


def _merge_value(old: Any, new: Any, schema: Schema, path: tuple[str, ...]) -> Any:
    if isinstance(new, dict) and isinstance(old, dict):
        return _merge_map(old, new, schema, path)
    if isinstance(new, list) and isinstance(old, list):
        strategy = schema(path)
        if strategy and strategy[0] == "merge":
            return _merge_keyed(old, new, strategy[1], schema, path)
        if strategy and strategy[0] == "set":
            return _merge_set(old, new)
    return _strip(new)


def _apply_directives(result: dict[str, Any], patch: dict[str, Any]) -> None:
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            if isinstance(result.get(field), list):
                result[field] = [v for v in result[field] if v not in value]
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        for key in list(result):
            if key not in retain:
                del result[key]


def _merge_map(
    original: dict[str, Any], patch: dict[str, Any], schema: Schema, path: tuple[str, ...]
) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return _strip(patch)
    if directive == "delete":
        return _DELETE
    result = dict(original)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        if value is None:
            result.pop(key, None)
            continue
        merged = _merge_value(result.get(key), value, schema, (*path, key))
        if merged is _DELETE:
            result.pop(key, None)
        else:
            result[key] = merged
    _apply_directives(result, patch)
    return result


def strategic_merge_patch(target: dict[str, Any], patch: Any, schema: Schema) -> dict[str, Any]:
    """Kubernetes strategic merge patch of `target` by `patch` under the kind's list `schema`."""
    if not isinstance(patch, dict):
        raise PatchError("a strategic merge patch must be a JSON object")
    merged = _merge_map(target, patch, schema, ())
    if merged is _DELETE:
        return {}
    assert isinstance(merged, dict)
    return merged
