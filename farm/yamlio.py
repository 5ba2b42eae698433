"""Safe YAML reading that remembers where each key was written.

Scene files are data: PyYAML's SafeLoader (no object construction), a bound on the
number of values written and on their expanded size (a billion-laughs file is refused,
not expanded), duplicate keys refused, and a line number for every mapping key so errors
can point at it.

Numbers are read as YAML 1.2's core schema reads them, not with YAML 1.1's implicit forms
that PyYAML follows: `10:5` (a keyframe without its parentheses) is not the sexagesimal
605, `017` is 17 (not octal 15), and `1_000` or `0b101` stay strings, so the scene
validator reports them as bad values instead of rendering a different constant.
"""

from __future__ import annotations

import re
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


MAX_SIMPLE_KEY = 1024
"""PyYAML's limit on an implicit key (``key: value``): a longer key is not seen as a key."""

MAX_INTEGER_TEXT = 4000
"""Integers written with more characters are refused as the file is read (far beyond any
setting's range; Python refuses to convert 4300+ decimal digits). Shorter ones reach the
settings' checks, which name the setting."""

_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# YAML 1.2 core schema (https://yaml.org/spec/1.2.2/#1032-tag-resolution); .inf/.nan spelt as
# PyYAML's YAML 1.1 resolver spells them (as before). \Z, not $: `$` also matches before "\n".
_INT_12 = re.compile(r"(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z")
_FLOAT_12 = re.compile(r"(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
                       r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z")


def _yaml12_number_resolvers(resolvers: dict) -> dict:
    """A copy of `resolvers` (never modified: it is SafeLoader's class state) whose int and
    float resolvers are YAML 1.2's; the others (bool, null, timestamp...) stay as they are."""
    copied = {first: [(tag, regexp) for tag, regexp in entries if tag not in (_INT_TAG, _FLOAT_TAG)]
              for first, entries in resolvers.items()}
    for first in "-+0123456789.":
        numbers = [(_FLOAT_TAG, _FLOAT_12)] if first == "." else [(_INT_TAG, _INT_12), (_FLOAT_TAG, _FLOAT_12)]
        copied[first] = numbers + copied.get(first, [])  # first match wins: int before float (`5`)
    return copied


def _construct_int(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    if not _INT_12.match(text):  # only an explicit !!int tag gets here with other text
        raise yaml.constructor.ConstructorError(
            None, None, f"'{text}' is not an integer (write digits, 0x.. or 0o..)", node.start_mark)
    if len(text) > MAX_INTEGER_TEXT:  # no setting takes such a number; int() of 4300+ decimal digits fails
        raise yaml.constructor.ConstructorError(
            None, None, f"a {len(text)}-character integer is far too large", node.start_mark)
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)


def _construct_float(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node)
    if not _FLOAT_12.match(text):  # only an explicit !!float tag gets here with other text
        raise yaml.constructor.ConstructorError(
            None, None, f"'{text}' is not a number (write e.g. 1.5, -2e3, .inf)", node.start_mark)
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return float("-inf") if lowered.startswith("-") else float("inf")
    if lowered == ".nan":
        return float("nan")
    return float(text)


class _DepthLimitedLoader(yaml.SafeLoader):
    """SafeLoader that reads numbers as YAML 1.2 does, counts the values it composes, and
    refuses deep nesting while scanning: PyYAML's scanner slows down quadratically with
    [ { nesting (3000 levels: seconds) and its composer recurses."""

    yaml_implicit_resolvers = _yaml12_number_resolvers(yaml.SafeLoader.yaml_implicit_resolvers)

    def __init__(self, stream):
        super().__init__(stream)
        self._composed = 0
        self.long_keys: list[tuple[int, int]] = []
        """(line, index), 0-based, of each possible key given up on for its length."""

    def stale_possible_simple_keys(self):
        """Note the keys PyYAML gives up on for being longer than MAX_SIMPLE_KEY (its error
        then only says "could not find expected ':'" or the like)."""
        for key in self.possible_simple_keys.values():
            if key.line == self.line and self.index - key.index > MAX_SIMPLE_KEY:
                self.long_keys.append((key.line, key.index))
        return super().stale_possible_simple_keys()

    def construct_object(self, node, deep=False):
        """As SafeLoader's, with a value that cannot be built (a date such as 2024-13-45)
        refused with its node's position instead of a bare ValueError."""
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError) as exc:
            if isinstance(exc, YamlError):
                raise
            reason = " ".join(str(exc).split(";")[0].split())
            if node.tag == "tag:yaml.org,2002:timestamp":
                problem = (f"'{node.value}' is read as a date but is not one ({reason}); "
                           "quote it to keep it as text")
            else:
                problem = f"a value cannot be read: {reason}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None

    def _count_node(self) -> None:
        """Refuse a document with too many values as it is read, not after reading it all."""
        self._composed += 1
        if self._composed > MAX_EXPANDED_NODES:
            raise YamlError(f"document holds more than {MAX_EXPANDED_NODES} values (a scene needs far fewer)")

    def compose_scalar_node(self, anchor):
        self._count_node()
        return super().compose_scalar_node(anchor)

    def compose_sequence_node(self, anchor):
        self._count_node()
        return super().compose_sequence_node(anchor)

    def compose_mapping_node(self, anchor):
        self._count_node()
        return super().compose_mapping_node(anchor)

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


_DepthLimitedLoader.add_constructor(_INT_TAG, _construct_int)
_DepthLimitedLoader.add_constructor(_FLOAT_TAG, _construct_float)


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


class _Yaml12Dumper(yaml.SafeDumper):
    """SafeDumper that quotes what `load_yaml` would read back as a number ("2e3", "0o17"):
    the same YAML 1.2 number resolvers decide."""

    yaml_implicit_resolvers = _yaml12_number_resolvers(yaml.SafeDumper.yaml_implicit_resolvers)


def dump_yaml(data, width: int = 80) -> str:
    """``data`` as YAML text that `load_yaml` reads back as the same values."""
    return yaml.dump(data, Dumper=_Yaml12Dumper, sort_keys=False, allow_unicode=True, width=width)


_KEY_COLON = re.compile(r":(?=[ \t\r\n]|$)")


def _long_key_line(text: str, loader: _DepthLimitedLoader, exc: yaml.MarkedYAMLError) -> int | None:
    """The 0-based line of a key the scanner gave up on for its length, when that is what
    the error is about: on the error's line, and a ':' ends it further on that line."""
    error_lines = {mark.line for mark in (exc.problem_mark, exc.context_mark) if mark is not None}
    for line, index in loader.long_keys:
        if line not in error_lines:
            continue
        end = text.find("\n", index)
        colon = _KEY_COLON.search(text, index, len(text) if end < 0 else end)
        if colon is not None and colon.start() - index > MAX_SIMPLE_KEY:
            return line
    return None


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
            # it holds at most MAX_EXPANDED_NODES values (counted while composing): aliases expand it
            raise YamlError(f"document expands to more than {MAX_EXPANDED_NODES} values through aliases "
                            "(*name) nested too deep; a scene needs far fewer")
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
        long_key = _long_key_line(text, loader, exc) if loader is not None else None
        if long_key is not None:
            problem = (f"a key longer than {MAX_SIMPLE_KEY} characters (YAML's limit for plain keys, "
                       "written as 'key: value'): shorten it")
            line = long_key + 1
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
