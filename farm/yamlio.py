"""Safe YAML reading that remembers where each key was written.

Scene files are data: PyYAML's SafeLoader (no object construction), a bound on the
expanded size (a billion-laughs file is refused, not expanded), duplicate keys refused,
and a line number for every mapping key so errors can point at it.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

MAX_FILE_BYTES = 4 * 1024 * 1024
MAX_EXPANDED_NODES = 200_000
MAX_DEPTH = 100


class YamlError(ValueError):
    """The file is not a YAML document we accept; `line` is 1-based or None."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Document:
    data: object
    lines: dict[tuple, int]
    """Path of keys (e.g. ("text_prompts", 100)) -> 1-based line of that key."""


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses deep nesting while scanning: PyYAML's scanner slows down
    quadratically with [ { nesting (3000 levels: seconds) and its composer recurses."""

    def _refuse_depth(self) -> None:
        raise YamlError(f"document is nested more than {MAX_DEPTH} levels deep", self.get_mark().line + 1)

    def fetch_flow_collection_start(self, TokenClass):
        if self.flow_level >= MAX_DEPTH:
            self._refuse_depth()
        return super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column):
        if len(self.indents) >= MAX_DEPTH:
            self._refuse_depth()
        return super().add_indent(column)


def _expanded_size(node, memo: dict[int, int]) -> int:
    """Node count with aliases expanded, memoised so shared subtrees cost once."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = 1  # guards recursive structures
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_EXPANDED_NODES + 1)
    return memo[key]


def _key_lines(node, loader: yaml.SafeLoader, path: tuple, lines: dict[tuple, int], seen: set[int]) -> None:
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys_here: dict[object, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError("mapping keys must be plain values", key_node.start_mark.line + 1)
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise YamlError("YAML merge keys (<<) are not supported in scene files: write the settings out",
                                key_node.start_mark.line + 1)
            key = loader.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if key in keys_here:
                raise YamlError(f"duplicate key '{key}' (first on line {keys_here[key]})", line)
            keys_here[key] = line
            lines[path + (key,)] = line
            _key_lines(value_node, loader, path + (key,), lines, seen)
    elif isinstance(node, yaml.SequenceNode):
        for index, child in enumerate(node.value):
            lines.setdefault(path + (index,), child.start_mark.line + 1)
            _key_lines(child, loader, path + (index,), lines, seen)


def load_yaml(text: str) -> Document:
    """Parse one YAML document safely; raise YamlError with a line number on problems."""
    if len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise YamlError(f"file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
    loader = None
    try:
        loader = _DepthLimitedLoader(text)
        node = loader.get_single_node()
        if node is None:
            return Document({}, {})
        if _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise YamlError(
                f"document expands to more than {MAX_EXPANDED_NODES} values (aliases nested too deep?)"
            )
        lines: dict[tuple, int] = {}
        _key_lines(node, loader, (), lines, set())
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.problem and exc.context and not exc.context.startswith("while"):
            problem = f"{exc.context}, {exc.problem}"  # e.g. "expected a single document in the stream, but found another document"
        if isinstance(exc, yaml.constructor.ConstructorError) and "tag" in problem:
            problem = f"{problem.strip()} (scene files are data: YAML tags that build objects are not allowed)"
        raise YamlError(" ".join(problem.split()), line) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise YamlError(f"unacceptable character #x{exc.character:04x}: {exc.reason}", line) from None
    except yaml.YAMLError as exc:
        raise YamlError(" ".join(str(exc).split())) from None
    except RecursionError:
        raise YamlError("document is nested too deeply") from None
    except YamlError:
        raise
    except (ValueError, OverflowError) as exc:  # e.g. an integer with more than 4300 digits
        reason = " ".join(str(exc).split(";")[0].split())
        raise YamlError(f"a value cannot be read: {reason}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return Document(data, lines)
