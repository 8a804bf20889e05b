from __future__ import annotations

import json

import pytest

from vtok.eval.questions import (
    CATEGORIES,
    COUNT_WORDS,
    Question,
    caption_prompt,
    caption_question,
    questions_for,
    template_texts,
)
from vtok.shapes import COLORS, MOTIONS, POSITIONS, SIZES, ShapesConfig, generate


def _obj(
    shape: str, color: str, size: str = "small", motion: str = "static", position: str = "center"
) -> dict:
    return {
        "shape": shape,
        "color": color,
        "size": size,
        "motion": motion,
        "position": position,
        "x": 1.0,
        "y": 1.0,
    }


def test_every_question_has_one_correct_answer_and_all_categories_appear() -> None:
    seen: set[str] = set()
    for i in range(60):
        video = generate(3, i, ShapesConfig(width=64, height=64, num_frames=4))
        qs = questions_for(video.attributes())
        assert qs == questions_for(json.dumps(video.attributes())), (
            "JSON text and dict give the same questions"
        )
        assert qs == questions_for(video.attributes()), "deterministic"
        for q in qs:
            assert q.category in CATEGORIES
            assert q.candidates.count(q.answer) == 1
            assert len(set(q.candidates)) == len(q.candidates)
        seen |= {q.category for q in qs}
        # Every object is asked about in each per-object category.
        n = len(video.objects)
        for cat in ("size", "position", "motion"):
            assert sum(q.category == cat for q in qs) == n
        assert qs[0].category == "count" and qs[0].answer == COUNT_WORDS[n - 1]
    assert seen == set(CATEGORIES)


def test_answers_are_the_ground_truth_and_candidates_the_generators_constants() -> None:
    attrs = {
        "count": 2,
        "objects": [_obj("circle", "red", "large", "left", "top left"), _obj("square", "cyan")],
    }
    by_text = {q.text: q for q in questions_for(attrs)}
    assert by_text["how many objects are there?"].answer == "two"
    assert by_text["what color is the circle?"].answer == "red"
    assert by_text["what color is the circle?"].candidates == list(COLORS)
    assert by_text["what size is the red circle?"].answer == "large"
    assert by_text["what size is the red circle?"].candidates == list(SIZES)
    assert by_text["where is the red circle at the start?"].answer == "top left"
    assert by_text["where is the red circle at the start?"].candidates == list(POSITIONS)
    assert by_text["how is the red circle moving?"].answer == "left"
    assert by_text["how is the cyan square moving?"].candidates == list(MOTIONS)


def test_ambiguous_shapes_are_named_by_size_or_asked_yes_no() -> None:
    attrs = {
        "count": 3,
        "objects": [_obj("circle", "red", "small"), _obj("circle", "blue", "large"), _obj("square", "green")],
    }
    texts = {q.text: q.answer for q in questions_for(attrs) if q.category == "color"}
    assert texts == {
        "what color is the small circle?": "red",
        "what color is the large circle?": "blue",
        "what color is the square?": "green",
    }
    twins = {"count": 2, "objects": [_obj("triangle", "red"), _obj("triangle", "blue")]}
    color_qs = [q for q in questions_for(twins) if q.category == "color"]
    assert all(q.candidates == ["yes", "no"] for q in color_qs)
    answers = {q.text: q.answer for q in color_qs}
    assert answers["is there a red object?"] == "yes" and answers["is there a blue object?"] == "yes"
    noes = [t for t, a in answers.items() if a == "no"]
    assert noes and all(t.split()[3] not in ("red", "blue") for t in noes)


def test_bad_attributes_and_captioning() -> None:
    with pytest.raises(AssertionError, match="unique"):
        questions_for({"count": 2, "objects": [_obj("circle", "red"), _obj("square", "red")]})
    with pytest.raises(AssertionError, match="not once"):
        Question("color", "?", ["red", "blue"], "green")
    q = caption_question("one object: a small red circle.")
    assert q.text == caption_prompt() and q.answer == "one object: a small red circle." and q.candidates == []


def test_template_texts_cover_every_question_word() -> None:
    words = {w for t in template_texts() for w in t.replace("?", " ").replace(".", " ").split()}
    for i in range(20):
        for q in questions_for(generate(5, i, ShapesConfig(width=64, height=64, num_frames=2)).attributes()):
            for text in (q.text, *q.candidates):
                assert set(text.replace("?", " ").split()) <= words, text
