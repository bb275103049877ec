"""``TextWindow`` against the plain string it stands for: any sequence of appends, front
cuts, clears and slices gives the string's answers."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from delidev.services.text_window import TextWindow

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)


class WindowMatchesAString(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.window = TextWindow()
        self.model = ""

    @rule(text=_text)
    def append(self, text: str) -> None:
        self.window.append(text)
        self.model += text

    @rule(count=st.integers(-5, 80))
    def drop_front(self, count: int) -> None:
        self.window.drop_front(count)
        self.model = self.model[max(count, 0) :]

    @rule()
    def clear(self) -> None:
        self.window.clear()
        self.model = ""

    @rule(start=st.integers(-3, 120), length=st.integers(-3, 120))
    def slice(self, start: int, length: int) -> None:
        expected = self.model[start : start + length] if start >= 0 else ""
        assert self.window.slice(start, start + length) == expected

    @invariant()
    def same_length_and_text(self) -> None:
        assert len(self.window) == len(self.model)
        assert self.window.slice(0, len(self.model)) == self.model


TestWindowMatchesAString = WindowMatchesAString.TestCase


@given(parts=st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=50))
def test_a_slice_across_many_parts_is_their_join(parts: list[str]) -> None:
    window = TextWindow()
    for part in parts:
        window.append(part)
    whole = "".join(parts)
    for start in range(0, len(whole), 3):
        assert window.slice(start, start + 7) == whole[start : start + 7]


def test_cutting_the_front_forgets_the_parts_before_it() -> None:
    window = TextWindow()
    for _ in range(1000):
        window.append("x" * 100)
    window.drop_front(50_050)
    assert len(window) == 49_950
    assert len(window._parts) == 500  # the part cut in the middle stays, whole
    assert window.slice(0, 60) == "x" * 60
