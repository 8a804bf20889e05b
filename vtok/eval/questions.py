"""Templated multiple-choice questions about a shapes-world clip: what training asks and TV-Align scores.

Five categories, exactly the attributes the generator draws (and the judge reads back): count, color,
size, position and motion. Every question has exactly one correct answer among its candidates, and the
candidates are the generator's own constants (vtok.shapes), so a new colour or motion there shows up
here without an edit. Colours are unique within a scene, so an object is named by its colour for the
size, position and motion questions; for the colour questions it is named by its shape, or by size and
shape, when that names exactly one object, and otherwise asked as yes/no.

Clips with only a caption (real data) get the captioning prompt instead (`caption_prompt`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from vtok.shapes import _MAX_OBJECTS, _NUMBER_WORDS, COLORS, MOTIONS, POSITIONS, SHAPES, SIZES

CATEGORIES: tuple[str, ...] = ("count", "color", "size", "position", "motion")
"""TV-Align's categories, in the order questions_for emits them."""

YES_NO: tuple[str, str] = ("yes", "no")
COUNT_WORDS: tuple[str, ...] = tuple(_NUMBER_WORDS[1 : _MAX_OBJECTS + 1])
"""The count candidates: "one" .. the most objects a scene can hold, spelled as the captions spell them."""

_COUNT = "how many objects are there?"
_COLOR_OF = "what color is the {name}?"
_IS_THERE = "is there a {color} object?"
_SIZE_OF = "what size is the {color} {shape}?"
_POSITION_OF = "where is the {color} {shape} at the start?"
_MOTION_OF = "how is the {color} {shape} moving?"
_CAPTION = "describe the video."


@dataclass(frozen=True)
class Question:
    """One multiple-choice question; `answer` is exactly one of `candidates`."""

    category: str
    """One of CATEGORIES, or "caption" for the captioning prompt."""
    text: str
    """The question as the model reads it."""
    candidates: list[str]
    """Every admissible answer, in a fixed order (the constants' order); empty for captioning."""
    answer: str
    """The correct answer (for captioning: the caption)."""

    def __post_init__(self) -> None:
        assert self.category in (*CATEGORIES, "caption"), f"unknown category {self.category!r}"
        if self.candidates:
            assert self.candidates.count(self.answer) == 1, (
                f"{self.text!r}: answer {self.answer!r} not once in candidates"
            )


def caption_prompt() -> str:
    """The prompt a caption-only clip is asked; its target is the caption."""
    return _CAPTION


def caption_question(caption: str) -> Question:
    """The captioning task of a clip without attributes."""
    return Question("caption", _CAPTION, [], caption)


def parse_attributes(attributes: Mapping[str, Any] | str | None) -> dict[str, Any] | None:
    """The `attributes` column (JSON text, a dict, or None/"" when absent) as a dict or None."""
    if attributes is None:
        return None
    if isinstance(attributes, str):
        if not attributes.strip():
            return None
        attributes = json.loads(attributes)
    assert isinstance(attributes, Mapping), (
        f"attributes must be a JSON object, got {type(attributes).__name__}"
    )
    return dict(attributes)


def questions_for(attributes: Mapping[str, Any] | str) -> list[Question]:
    """Every templated question about one clip, in a fixed order: count, then per category per object.

    `attributes` is the shapes world's ground truth ({"count": N, "objects": [{"shape", "color", "size",
    "motion", "position", ...}, ...]}) as a dict or its JSON text.
    """
    attrs = parse_attributes(attributes)
    assert attrs is not None, "questions_for needs attributes; use caption_question for caption-only clips"
    objects: list[dict[str, Any]] = list(attrs["objects"])
    count = int(attrs.get("count", len(objects)))
    assert count == len(objects), f"attributes say count={count} but list {len(objects)} objects"
    colors = [str(o["color"]) for o in objects]
    assert len(set(colors)) == len(colors), f"colours must be unique within a scene, got {colors}"
    out = (
        [Question("count", _COUNT, list(COUNT_WORDS), COUNT_WORDS[count - 1])]
        if 1 <= count <= len(COUNT_WORDS)
        else []
    )
    out += _color_questions(objects)
    for obj in objects:
        out.append(Question("size", _SIZE_OF.format(**obj), list(SIZES), str(obj["size"])))
    for obj in objects:
        out.append(Question("position", _POSITION_OF.format(**obj), list(POSITIONS), str(obj["position"])))
    for obj in objects:
        out.append(Question("motion", _MOTION_OF.format(**obj), list(MOTIONS), str(obj["motion"])))
    return out


def _color_questions(objects: list[dict[str, Any]]) -> list[Question]:
    """ "what color is the {shape}?" where the shape names one object, else by size and shape, else yes/no."""
    shapes = Counter(str(o["shape"]) for o in objects)
    sized = Counter((str(o["size"]), str(o["shape"])) for o in objects)
    present = {str(o["color"]) for o in objects}
    absent = [c for c in COLORS if c not in present]
    out: list[Question] = []
    for i, obj in enumerate(objects):
        if shapes[obj["shape"]] == 1:
            name = str(obj["shape"])
        elif sized[(obj["size"], obj["shape"])] == 1:
            name = f"{obj['size']} {obj['shape']}"
        else:
            out.append(Question("color", _IS_THERE.format(color=obj["color"]), list(YES_NO), "yes"))
            if absent:  # balance the yes with a no; a scene never holds every colour (4 objects, 6 colours)
                other = absent[i % len(absent)]
                out.append(Question("color", _IS_THERE.format(color=other), list(YES_NO), "no"))
            continue
        out.append(Question("color", _COLOR_OF.format(name=name), list(COLORS), str(obj["color"])))
    return out


def template_texts() -> list[str]:
    """Every word the templates and candidates can produce, as texts to train a word tokenizer on."""
    texts = [_COUNT, _CAPTION, *COUNT_WORDS, *YES_NO, *COLORS, *SIZES, *POSITIONS, *MOTIONS]
    for shape in SHAPES:
        for size in SIZES:
            texts.append(_COLOR_OF.format(name=f"{size} {shape}"))
        for color in COLORS:
            texts += [t.format(color=color, shape=shape) for t in (_SIZE_OF, _POSITION_OF, _MOTION_OF)]
    texts += [_IS_THERE.format(color=c) for c in COLORS]
    return texts
