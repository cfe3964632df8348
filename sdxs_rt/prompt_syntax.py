"""Prompt syntax for a model conditioned on ONE pooled vector: blends, schedules, emphasis.

Pure Python (no torch, no numpy): `parse_prompt(text)` gives a `PromptProgram`, and
`program.segments(steps)` says, for each run of steps, which weighted parts make the condition.

Blends (Midjourney's multi-prompts), split at every `::` outside brackets and parentheses:
  - a part's text runs up to its `::`; a number written immediately after the `::` (no space:
    `cat::2`, `dog::-0.5`, `x::.5`, `y::1e-1`) is that part's weight, else the weight is 1
    (`wood::teapot`, `cat:: dog`); the text after the last `::` (and its weight), when it is not
    blank, is a final part of weight 1. Each part's text is trimmed of surrounding whitespace.
  - after `::`, something that starts like a number (a digit, `+`, `-` or `.`) must be one, up to
    the next whitespace or `::` (`cat::2x` is an error); a part whose text is blank is an error.
  - the condition is sum(w_i * v_i) / sum of the positive w_i: `a::2` alone is `a`, `a::1 b::0`
    is exactly `a` (a part of weight 0 is dropped), `a:: b::-0.5` subtracts half of `b`. Positive
    weights adding up to 0 or less are an error. `WeightedPart.weight` is already divided.
  - a part written `<image:NAME>` (alone, NAME without spaces or any of `<>:[]()|\\`) is an image
    prompt: `a cat:: <image:ref>::0.5`; the caller maps NAME to an image file. `<image:` anywhere
    else is an error. A1111's `<lora:...>` suggested the form.
Prompt editing and alternation (A1111's modules/prompt_parser.py, its current default rules),
inside each part: `[from:to:when]`, `[to:when]` (nothing, then `to`), `[from::when]` (`from`,
then nothing), nested freely, and `[a|b|c]` (step k shows option (k-1) mod n; `[fe|]` has an
empty option). `when` with a `.` is a fraction of the steps (`0.25`, `.5`, `1.0`), without one a
step number (`3`); either way it is truncated to an integer and capped at `steps`, and the first
text holds for steps 1..when. A group that fits none of these forms (`[a:b]`, `(a:b:c)`) is
literal text, as in A1111; so is the whole part (no schedule applies) when a `|` stands outside
an alternation or a `\\` escapes nothing (at the end or before a line break), where A1111's
parser gives up too. `notes` says so in one sentence each, for the caller to print.
Emphasis: `(word)`, `(word:1.3)`, `[word]` and escapes `\\(` `\\)` `\\[` `\\]` `\\\\` (a `\\`
before another character is dropped) cannot act on a pooled vector: they are removed keeping
the words, by A1111's own emphasis rules, after scheduling; `stripped_emphasis` tells the caller
to warn. `BREAK` and `AND` are plain words here.
Unbalanced brackets or parentheses are an error (A1111 keeps them as text); escape a literal
one. A prompt with no `::`, no `<image:` and none of `[]()\\` is plain: `is_plain`, one part,
its text exactly as written.
Steps are numbered 1..steps (the k-th denoising step is step k); `prompt_schedule` is A1111's
get_learned_conditioning_prompt_schedules for one prompt (emphasis kept, runs not merged).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from sdxs_rt.errors import UsageError

_MAX_DEPTH = 100
_CLOSER = {"[": "]", "(": ")"}
_OPENER = {"]": "[", ")": "("}
_NUMBER = r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?"
_WHEN = re.compile(rf"\s*({_NUMBER})\s*")
_WEIGHT = re.compile(_NUMBER)
_WEIGHT_TOKEN = re.compile(r"(?:(?!::)\S)+")
_IMAGE = re.compile(r"<image:([^\s<>:\[\]()|\\]+)>")
_ATTENTION = re.compile(r"\\[()\[\]\\]|\\|\(|\[|:\s*[+-]?[.\d]+\s*\)|\)|\]|[^\\()\[\]:]+|:")
_WEIGHT_START = frozenset("+-.0123456789")
_SPECIAL = frozenset("[]()\\")


@dataclass(frozen=True)
class WeightedPart:
    """One term of the condition: `weight` (normalised) times the vector of `text` or `image`."""

    weight: float
    text: str | None = None
    image: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        """("text", TEXT) or ("image", NAME): what to encode, and the cache key."""
        return ("image", self.image) if self.image is not None else ("text", self.text or "")


@dataclass(frozen=True)
class Segment:
    """The condition for the steps after the previous segment's `until_step` up to this one."""

    until_step: int
    parts: tuple[WeightedPart, ...]


@dataclass(frozen=True)
class _Sched:
    before: tuple | None
    after: tuple
    when: str


@dataclass(frozen=True)
class _Alt:
    options: tuple[tuple, ...]


@dataclass(frozen=True)
class BlendPart:
    """A part as written: its text (an image part's is `<image:NAME>`), raw weight, image NAME."""

    text: str
    weight: float = 1.0
    image: str | None = None
    nodes: tuple = field(default=(), repr=False, compare=False)


@dataclass(frozen=True)
class PromptProgram:
    """A parsed prompt: `text` as written, its blend `parts`, and what the caller should say."""

    text: str
    parts: tuple[BlendPart, ...]
    stripped_emphasis: bool
    is_plain: bool
    notes: tuple[str, ...] = ()

    @property
    def is_scheduled(self) -> bool:
        """Whether the condition can change between steps."""
        return any(_has_schedule(p.nodes) for p in self.parts)

    def parts_at(self, step: int, steps: int) -> tuple[WeightedPart, ...]:
        """The weighted parts for step `step` (1..steps) of `steps`; weight-0 parts left out."""
        _check_step(step, steps)
        if self.is_plain:
            return (WeightedPart(1.0, text=self.text),)
        total = sum(p.weight for p in self.parts if p.weight > 0)
        return tuple(
            WeightedPart(p.weight / total, image=p.image)
            if p.image is not None
            else WeightedPart(p.weight / total, text=_text_at(p.nodes, step, steps))
            for p in self.parts
            if p.weight != 0
        )

    def segments(self, steps: int) -> list[Segment]:
        """Maximal runs of steps with the same parts, in order; the last ends at `steps`."""
        _check_step(1, steps)
        bounds = {steps}
        for part in self.parts:
            _collect_bounds(part.nodes, steps, bounds)
        segments: list[Segment] = []
        for until in sorted(bounds):
            parts = self.parts_at(until, steps)
            if segments and segments[-1].parts == parts:
                segments[-1] = Segment(until, parts)
            else:
                segments.append(Segment(until, parts))
        return segments


def parse_prompt(text: str) -> PromptProgram:
    """Parse a prompt; malformed syntax raises UsageError naming the position or the part."""
    _bracket_tree(text, 0)  # unbalanced brackets anywhere: an error before anything else
    if not (_SPECIAL & set(text)) and "::" not in text and "<image:" not in text:
        return PromptProgram(text, (BlendPart(text, 1.0, None, (text,)),), False, True)
    raw_parts = _split_blend(text)
    blend = [raw[:2] for raw in raw_parts] != [(0, len(text))]
    notes: list[str] = []
    parts = tuple(_make_part(text, raw, blend, notes) for raw in raw_parts)
    if sum(p.weight for p in parts if p.weight > 0) <= 0:
        listed = ", ".join(f"{p.text!r} {p.weight:g}" for p in parts)
        raise UsageError(
            f"no part of the prompt's blend has a weight above 0 ({listed}), and the blend is "
            "divided by the sum of the positive weights; give at least one part a weight above 0"
        )
    stripped = any(_SPECIAL & set(leaf) for p in parts for leaf in _leaves(p.nodes))
    return PromptProgram(text, parts, stripped, False, tuple(dict.fromkeys(notes)))


def prompt_schedule(text: str, steps: int) -> list[tuple[int, str]]:
    """A1111's get_learned_conditioning_prompt_schedules([text], steps)[0] (emphasis kept)."""
    _check_step(1, steps)
    nodes = _schedule_nodes(text, 0, [])
    bounds = {steps}
    _collect_bounds(nodes, steps, bounds)
    return [(t, _render(nodes, t, steps)) for t in sorted(bounds)]


def strip_emphasis(text: str) -> str:
    """The words of A1111's parse_prompt_attention(text), without their weights."""
    out: list[str] = []
    depth = {"(": 0, "[": 0}
    for match in _ATTENTION.finditer(text):
        token = match.group()
        if token[0] == "\\":
            out.append(token[1:])
        elif token in depth:
            depth[token] += 1
        elif token[-1] in _OPENER and depth[_OPENER[token[-1]]] > 0:
            depth[_OPENER[token[-1]]] -= 1
        else:
            out.append(token)
    return "".join(out)


# --- brackets ---------------------------------------------------------------------------------


@dataclass
class _Group:
    open: str
    start: int
    items: list = field(default_factory=list)


def _bracket_tree(text: str, offset: int) -> list:
    """Items (str | _Group) of `text`; `offset` places error positions in the whole prompt."""
    root = _Group("", -1)
    stack = [root]
    buffer: list[str] = []

    def flush() -> None:
        if buffer:
            stack[-1].items.append("".join(buffer))
            buffer.clear()

    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] != "\n":
            buffer.append(text[i : i + 2])
            i += 2
            continue
        if char in _CLOSER:
            if len(stack) > _MAX_DEPTH:
                raise UsageError(f"the prompt nests brackets deeper than {_MAX_DEPTH} levels")
            flush()
            group = _Group(char, offset + i)
            stack[-1].items.append(group)
            stack.append(group)
        elif char in _OPENER:
            flush()
            _check_closer(stack[-1], char, offset + i)
            stack.pop()
        else:
            buffer.append(char)
        i += 1
    if len(stack) > 1:
        group = stack[-1]
        raise UsageError(
            f"the prompt's {group.open!r} at character {group.start + 1} is never closed; close "
            f"it with {_CLOSER[group.open]!r}, or write \\{group.open} for a literal {group.open!r}"
        )
    flush()
    return root.items


def _check_closer(group: _Group, char: str, position: int) -> None:
    if not group.open:
        raise UsageError(
            f"the prompt's {char!r} at character {position + 1} has no opening "
            f"{_OPENER[char]!r}; remove it, or write \\{char} for a literal {char!r}"
        )
    if _CLOSER[group.open] != char:
        raise UsageError(
            f"the prompt's {char!r} at character {position + 1} does not match the "
            f"{group.open!r} at character {group.start + 1}; close that with "
            f"{_CLOSER[group.open]!r} first"
        )


# --- blends -----------------------------------------------------------------------------------


def _split_blend(text: str) -> list[tuple[int, int, int, str | None]]:
    """(start, end, weight position, weight text) of each part; one part when no `::`."""
    parts: list[tuple[int, int, int, str | None]] = []
    depth, start, i = 0, 0, 0
    while i < len(text):
        char = text[i]
        if char == "\\" and i + 1 < len(text) and text[i + 1] != "\n":
            i += 2
            continue
        depth += (char in _CLOSER) - (char in _OPENER)
        if depth == 0 and text.startswith("::", i):
            k = i + 2
            token = _WEIGHT_TOKEN.match(text, k) if text[k : k + 1] in _WEIGHT_START else None
            parts.append((start, i, k, token.group() if token else None))
            i = start = token.end() if token else k
            continue
        i += 1
    if not parts or text[start:].strip():
        parts.append((start, len(text), len(text), None))
    return parts


def _make_part(
    text: str, raw: tuple[int, int, int, str | None], blend: bool, notes: list[str]
) -> BlendPart:
    start, end, weight_at, weight_text = raw
    weight = _weight(weight_text, weight_at)
    source = text[start:end]
    if blend:
        lead = len(source) - len(source.lstrip())
        start, source = start + lead, source.strip()
        if not source:
            raise UsageError(
                f"the prompt's blend part before the '::' at character {end + 1} is empty; "
                "put the part's text before its '::'"
            )
    image = _IMAGE.fullmatch(source.strip())
    if image:
        return BlendPart(source.strip(), weight, image.group(1), ())
    if "<image:" in source:
        at = start + source.index("<image:") + 1
        raise UsageError(
            f"the image reference at character {at} must be a blend part of its own, written "
            "<image:NAME> with no spaces or <>:[]()|\\ in NAME (e.g. 'a cat:: <image:ref>::0.5')"
        )
    return BlendPart(source, weight, None, _schedule_nodes(source, start, notes))


def _weight(token: str | None, position: int) -> float:
    if token is None:
        return 1.0
    if not _WEIGHT.fullmatch(token):
        raise UsageError(
            f"the weight {token!r} after '::' at character {position + 1} is not a number; "
            "write one right after '::' (e.g. 'cat::2 dog::-0.5'), or a space before text"
        )
    value = float(token)
    if not math.isfinite(value):
        raise UsageError(
            f"the weight {token!r} after '::' at character {position + 1} is too large a number"
        )
    return value


# --- A1111 prompt editing ---------------------------------------------------------------------


def _schedule_nodes(text: str, offset: int, notes: list[str]) -> tuple:
    """The part as a tuple of str | _Sched | _Alt; the literal text where A1111 gives up."""
    items = _bracket_tree(text, offset)
    literal: list[_Group] = []
    nodes = None if _has_lone_backslash(text) else _top_level(items, literal)
    if nodes is None:
        if "[" in text:
            notes.append(
                f"{text!r} is kept as written, with no prompt editing, because a '|' stands "
                "outside any [a|b] alternation or a '\\' escapes nothing (A1111 does the same)"
            )
        return (text,)
    for group in literal:
        notes.append(
            f"the {group.open!r} at character {group.start + 1} forms none of [from:to:when], "
            "[to:when], [from::when], [a|b], [word], (word) or (word:weight), so it is kept as text"
        )
    return nodes


def _top_level(items: list, literal: list[_Group]) -> tuple | None:
    """Valid groups become constructs, others literal around their contents; `|` fails all."""
    out: list = []
    for item in items:
        if isinstance(item, str):
            if "|" in _split_level([item])[1]:
                return None
            out.append(item)
            continue
        construct = _construct(item)
        if construct is None:
            literal.append(item)
            inner = _top_level(item.items, literal)
            if inner is None:
                return None
            construct = (item.open, *inner, _CLOSER[item.open])
        out.extend(construct)
    return tuple(out)


def _construct(group: _Group) -> tuple | None:
    """The A1111 construct a bracket group forms, or None when it forms none."""
    pieces, seps = _split_level(group.items)
    when = _when_text(pieces[-1]) if group.open == "[" and ":" in seps else None
    prompts = [_prompt(piece) for piece in (pieces[:-1] if when is not None else pieces)]
    valid = [p for p in prompts if p is not None]
    if len(valid) < len(prompts) or ("|" in seps and ":" in seps):
        return None
    if group.open == "(":
        if "|" in seps or len(seps) > 1:
            return None
        return ("(", *valid[0], *((":", *valid[1]) if seps else ()), ")")
    if "|" in seps:
        return (_Alt(tuple(valid)),)
    if not seps:
        return ("[", *valid[0], "]")
    if when is None or len(seps) > 2:
        return None
    return (_Sched(valid[0] if len(seps) == 2 else None, valid[-1], when),)


def _when_text(piece: list) -> str | None:
    match = _WHEN.fullmatch(piece[0]) if len(piece) == 1 and isinstance(piece[0], str) else None
    return match.group(1) if match else None


def _prompt(items: list) -> tuple | None:
    out: list = []
    for item in items:
        construct = (item,) if isinstance(item, str) else _construct(item)
        if construct is None:
            return None
        out.extend(construct)
    return tuple(out)


def _split_level(items: list) -> tuple[list[list], list[str]]:
    """Split items at this level's unescaped ':' and '|': (pieces, separators)."""
    pieces: list[list] = [[]]
    seps: list[str] = []
    for item in items:
        if not isinstance(item, str):
            pieces[-1].append(item)
            continue
        chunk, i = [], 0
        while i < len(item):
            if item[i] == "\\":
                chunk.append(item[i : i + 2])
                i += 2
                continue
            if item[i] in ":|":
                if chunk:
                    pieces[-1].append("".join(chunk))
                pieces.append([])
                seps.append(item[i])
                chunk = []
            else:
                chunk.append(item[i])
            i += 1
        if chunk:
            pieces[-1].append("".join(chunk))
    return pieces, seps


def _has_lone_backslash(text: str) -> bool:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            if i + 1 == len(text) or text[i + 1] == "\n":
                return True
            i += 1
        i += 1
    return False


def _when_step(when: str, steps: int) -> int:
    value = float(when) * steps if "." in when else float(when)
    if value >= steps:
        return steps
    return int(value) if value > 0 else 0


def _collect_bounds(nodes: tuple, steps: int, bounds: set[int]) -> None:
    for node in nodes:
        if isinstance(node, _Sched):
            when = _when_step(node.when, steps)
            if when >= 1:
                bounds.add(when)
            _collect_bounds(node.before or (), steps, bounds)
            _collect_bounds(node.after, steps, bounds)
        elif isinstance(node, _Alt):
            bounds.update(range(1, steps + 1))
            for option in node.options:
                _collect_bounds(option, steps, bounds)


def _render(nodes: tuple, step: int, steps: int) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Sched):
            chosen = node.before or () if step <= _when_step(node.when, steps) else node.after
            out.append(_render(chosen, step, steps))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, steps))
    return "".join(out)


def _text_at(nodes: tuple, step: int, steps: int) -> str:
    return strip_emphasis(_render(nodes, step, steps))


def _leaves(nodes: tuple):
    for node in nodes:
        if isinstance(node, str):
            yield node
        elif isinstance(node, _Sched):
            yield from _leaves(node.before or ())
            yield from _leaves(node.after)
        elif isinstance(node, _Alt):
            for option in node.options:
                yield from _leaves(option)


def _has_schedule(nodes: tuple) -> bool:
    return any(not isinstance(node, str) for node in nodes)


def _check_step(step: int, steps: int) -> None:
    if steps < 1 or not 1 <= step <= steps:
        raise ValueError(f"step {step} is outside 1..{steps}")
