"""What the prompt boxes say while the user types (no model needed: sdxs_rt.prompt_syntax is pure).

`check_prompt_text` gives the one-sentence parse error, or a short hint about what the library
will do with the text: emphasis it strips, a blend's parts, the steps a schedule switches after.
The controller refuses to start a run with `check_prompt_syntax`, the same rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sdxs_rt_desktop.image_prompts import ImagePromptEntry, image_names

from sdxs_rt.conditioning import resolve_image_names
from sdxs_rt.errors import UsageError
from sdxs_rt.prompt_syntax import PromptProgram, parse_prompt

EMPHASIS_HINT = "emphasis such as (word:1.3) will be removed, keeping the words"
MAX_LISTED_SWITCHES = 4


@dataclass(frozen=True)
class PromptCheck:
    error: str = ""  # the parse error as the library words it ("" when the text parses)
    hint: str = ""  # "blend of 2 parts · switches after step 20 of 40" ("" for plain text)


def parse_with_images(text: str, entries: Sequence[ImagePromptEntry]) -> PromptProgram:
    """Parse `text`; UsageError also for `<image:NAME>` naming none of the image prompts."""
    program = parse_prompt(text)
    resolve_image_names(program, image_names(entries))
    return program


def check_prompt_syntax(text: str, entries: Sequence[ImagePromptEntry]) -> None:
    """Raise the library's UsageError for text that would fail once the model is loaded."""
    parse_with_images(text, entries)


def check_prompt_text(
    text: str, steps: int, entries: Sequence[ImagePromptEntry] = (), beside: bool = False
) -> PromptCheck:
    """The error or hint for a prompt box; `beside`: the image prompts join this prompt's blend
    (the prompt, not the negative)."""
    try:
        program = parse_with_images(text, entries)
    except UsageError as exc:
        return PromptCheck(error=str(exc))
    hints = [EMPHASIS_HINT] if program.stripped_emphasis else []
    count = blend_size(program, entries if beside else ())
    if count > 1:
        hints.append(f"blend of {count} parts")
    if program.is_scheduled and steps >= 1:
        hints.append(switch_text(program, steps))
    hints += program.notes
    return PromptCheck(hint=" · ".join(hint for hint in hints if hint))


def blend_size(program: PromptProgram, entries: Sequence[ImagePromptEntry]) -> int:
    """Parts in the condition: the prompt's own, and the image prompts it does not place."""
    own = 1 if program.is_plain else len(program.parts)
    placed = {part.image for part in program.parts if part.image is not None}
    beside = [
        path
        for index, (path, _) in enumerate(entries)
        if not placed & {str(index + 1), Path(path).stem}
    ]
    return own + len(beside)


def switch_text(program: PromptProgram, steps: int) -> str:
    """'switches after step 20 of 40'; '' when the schedule never switches in `steps`."""
    switches = [segment.until_step for segment in program.segments(steps)[:-1]]
    if not switches:
        return ""
    if len(switches) == 1:
        return f"switches after step {switches[0]} of {steps}"
    if len(switches) <= MAX_LISTED_SWITCHES:
        listed = ", ".join(map(str, switches[:-1])) + f" and {switches[-1]}"
        return f"switches after steps {listed} of {steps}"
    return f"switches {len(switches)} times in {steps} steps, first after step {switches[0]}"
