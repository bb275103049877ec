"""Masking a run's output with its task's secret values: each value and its encoded forms
(base64, JSON and URL escapes) become ``MASK``, in one text (``mask``) or in output that
arrives in chunks (``OutputMasker``, right for any chunking)."""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import logging
import urllib.parse
from collections.abc import Collection, Mapping, Sequence

log = logging.getLogger(__name__)

MASK = "********"
# Shorter values are not masked: masking "a" or "42" would mangle ordinary output and
# reveal the value by where the masks land.
MIN_MASKED_LENGTH = 4


def _forms(value: str) -> list[str]:
    """What of ``value`` gets masked: the value, its base64 and url-safe base64 forms, and
    the value as written inside a JSON string or a URL (escaped), as GitHub's masker does.

    Base64 of a longer byte string that holds the value encodes it differently depending on
    where the value starts modulo 3 bytes; only the characters whose six bits all come from
    the value are fixed. So, as GitHub's masker does, each alphabet gets the whole encoding
    (the value encoded on its own) and the stable inner part for each of the three shifts.
    Longest first, so that a longer form is masked before a part of it.
    """
    raw = value.encode()
    forms = {
        value,
        json.dumps(value)[1:-1],
        json.dumps(value, ensure_ascii=False)[1:-1],
        urllib.parse.quote(value, safe=""),
        urllib.parse.quote_plus(value, safe=""),
    }
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        whole = encode(raw).decode()
        forms |= {whole, whole.rstrip("=")}
        for shift in (0, 1, 2):
            encoded = encode(bytes(shift) + raw).decode()
            first = -(-8 * shift // 6)  # the first character with no bit of the shift
            end = 8 * (shift + len(raw)) // 6  # the last one with no bit of what follows
            forms.add(encoded[first:end])
    return sorted((f for f in forms if len(f) >= MIN_MASKED_LENGTH), key=len, reverse=True)


def _values(values: Mapping[str, str] | Collection[str]) -> list[str]:
    """The distinct values long enough to mask (a mapping's values: names play no part)."""
    held = values.values() if isinstance(values, Mapping) else values
    return sorted({v for v in held if len(v) >= MIN_MASKED_LENGTH}, key=len)


def _all_forms(values: Mapping[str, str] | Collection[str]) -> list[str]:
    forms = {f for v in _values(values) for f in _forms(v)}
    return sorted(forms, key=len, reverse=True)


def _replace(text: str, forms: Sequence[str]) -> str:
    for form in forms:
        if form in text:
            text = text.replace(form, MASK)
    return text


# What ``_joined_forms`` may spend: characters of forms scanned for inner forms (one ``in``
# each, ~60 ms of CPU per 10^9, in a thread: see ``OutputMasker.build``). The worst set
# within a task's default limits (64 KiB, each value a prefix of the next, of characters
# whose escapes are long) needs 7 * 10^8; a unit's masking set may add its composite's and
# the values kept for a running run's masking.
MAX_JOINED_WORK = 2_000_000_000


def _joined_forms(
    forms_of: Mapping[str, Sequence[str]], forms: Sequence[str]
) -> tuple[list[str], bool]:
    """``forms`` (every value's) and, for a form of a value that holds another value, the
    form as it reads with the inner value's forms masked (what a chunk masked on its own
    shows of it), longest first; and whether that was done for every such value.

    Only values that hold another are looked at: most hold none. (A value's own forms hold
    each other, base64 in base64, and are left so: masking them in each other would only
    mask what lies next to a mask.) The work is bounded (``MAX_JOINED_WORK``), the
    shortest outer values first: past the bound an outer value is still masked wherever a
    chunk holds it whole, and its inner values everywhere, but a cut just after an inner
    value may leave the rest of the outer one showing. Only a set built to nest, value in
    value, reaches it (it is logged, without values).
    """
    kept = list(forms_of)  # shortest first
    joined = set(forms)
    work, complete = 0, True
    for index, outer in enumerate(kept):
        inner = [v for v in kept[:index] if len(v) < len(outer) and v in outer]
        if not inner:
            continue
        inner_forms = sorted({f for v in inner for f in forms_of[v]}, key=len, reverse=True)
        lengths = [-len(f) for f in inner_forms]  # ascending, for bisect
        for form in forms_of[outer]:
            shorter = inner_forms[bisect.bisect_right(lengths, -len(form)) :]
            work += len(form) * len(shorter)
            if work > MAX_JOINED_WORK:
                complete = False
                break
            masked = _replace(form, shorter)
            if masked != form:
                joined.add(masked)
        if not complete:
            break
    return sorted(joined, key=len, reverse=True), complete


def mask(text: str, values: Mapping[str, str] | Collection[str]) -> str:
    """The text with every secret value (plain or base64) replaced by a mask."""
    if not values or not text:
        return text
    return _replace(text, _all_forms(values))


# Masking scans the text once per form: above this many characters times forms (~2 ms of CPU),
# it runs in a thread, so that the event loop goes on between the scans (each a short C call).
OFFLOAD_WORK = 20_000_000
# Values of more characters than this in all are made into a masker in a thread (~1 ms).
OFFLOAD_BUILD_CHARS = 2_000
# A form's first characters looked for at once when finding where a held-back end begins.
_PROBE = 16
# Candidate starts checked per form before holding back all that could be one (a value made
# to repeat itself, e.g. "aaaa…", would otherwise cost quadratic time).
_MAX_CANDIDATES = 64


class OutputMasker:
    """Masks a run's output as it arrives, for any chunking.

    A value split over several chunks is only seen whole once they are joined, so the
    output is placed in the log up to a point where no value can still be starting: what
    follows it (an end that is the beginning of some form, never longer than the longest
    form) is held back, joined to the next chunk, masked and placed with it. Nothing placed
    ever changes afterwards, so offsets stay put and live followers see exactly what is
    stored. The held-back end is placed when the run ends (it is no value: only the start of
    one).

    A value may hold another (a database URL with its password). A chunk is masked on its
    own before it is joined, so the part of the outer value that it holds may show the inner
    one masked already; so the join and the hold-back also know each form with the forms it
    holds masked (``_joined_forms``): the outer value is masked whole wherever the output is
    cut.
    """

    def __init__(self, values: Mapping[str, str] | Collection[str]) -> None:
        forms_of = {v: _forms(v) for v in _values(values)}  # each value's, made once
        self._forms = sorted({f for fs in forms_of.values() for f in fs}, key=len, reverse=True)
        self._joined, complete = _joined_forms(forms_of, self._forms)
        if not complete:
            log.warning(
                "secret values nest in each other beyond what is worked out for masking"
                " (%d values): an outer value cut just after an inner one may partly show",
                len(forms_of),
            )
        self._reach = max((len(f) for f in self._joined), default=1) - 1
        self.weight = sum(map(len, self._joined)) + 1
        """Characters held (for a cache's bound)."""

    def __repr__(self) -> str:  # never print values
        return f"OutputMasker(forms={len(self._forms)})"

    @classmethod
    async def build(cls, values: Mapping[str, str] | Collection[str]) -> OutputMasker:
        """A masker; for a large set made in a thread, so that the event loop goes on."""
        held = values.values() if isinstance(values, Mapping) else values
        if sum(map(len, held)) < OFFLOAD_BUILD_CHARS:
            return cls(values)
        return await asyncio.to_thread(cls, values)

    def mask(self, text: str) -> str:
        """One chunk, masked on its own: what ``feed`` expects."""
        return _replace(text, self._forms)

    async def mask_each(self, texts: Sequence[str]) -> list[str]:
        """``mask`` of each text; a large batch in a thread (see ``OFFLOAD_WORK``)."""
        if sum(map(len, texts)) * len(self._forms) < OFFLOAD_WORK:
            return [self.mask(t) for t in texts]
        return await asyncio.to_thread(lambda: [self.mask(t) for t in texts])

    def feed(self, held: str, data: str) -> tuple[str, str]:
        """The next chunk (masked on its own already) after the end held back so far.

        Returns what to place now and what to hold back.
        """
        if held:
            # A form that starts in ``held`` ends within ``reach`` characters of ``data``;
            # the rest of ``data`` was masked with the chunk.
            data = _replace(held + data[: self._reach], self._joined) + data[self._reach :]
        keep = self._held_back(data)
        return data[: len(data) - keep], data[len(data) - keep :]

    def _held_back(self, text: str) -> int:
        """The length of the longest end of ``text`` that is the beginning of a form."""
        size, best = len(text), 0
        for form in self._joined:
            reach = min(len(form) - 1, size)
            if reach <= best:
                if len(form) - 1 <= best:
                    break  # the forms are longest first: none can hold back more
                continue
            probe = min(_PROBE, reach)
            # An end at least ``probe`` long starts with the form's first ``probe`` characters.
            at, candidates = text.find(form[:probe], size - reach), 0
            while at != -1 and size - at > best:
                if form.startswith(text[at:]):
                    best = size - at
                    break
                candidates += 1
                if candidates >= _MAX_CANDIDATES:
                    best = reach  # too many near misses: hold back all that could be one
                    break
                at = text.find(form[:probe], at + 1)
            for length in range(min(probe - 1, reach), best, -1):
                if text.endswith(form[:length]):
                    best = length
                    break
        return best
