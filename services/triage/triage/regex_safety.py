"""Static screening of rule regular expressions for catastrophic backtracking (ReDoS).

Python's `re` backtracks and cannot be interrupted, so one bad pattern in a rule blocks the
consumer and the API of the whole service on every incident it is tried on (`(a+)+$` takes
seconds on 25 characters, `.*.*.*x` seconds on 500). Rules are screened when they are put in
force instead. The screen is conservative: it rejects the constructs that make backtracking
super-linear per start position and names the one it found, so the author can rewrite it:

- a quantified group containing another variable quantifier (`(a+)+`, `(\\w+\\s?)*`), unless
  both are bounded and small (`(\\d{1,3}\\.){3}` is fine);
- a quantified alternation whose branches can start with the same character (`(a|ab)*`);
- two unbounded quantifiers that can match the same characters with nothing in between that
  the first cannot also match (`.*.*`, `\\w+\\w+`, `.*error.*timeout`); a trailing one is
  harmless, since reaching it means the match succeeded;
- backreferences (`(a+)\\1`).

What remains can still cost O(n^2) over the search (e.g. a leading `.*`), which is why the text
a regex searches is capped (see domain.REGEX_TEXT_LIMIT)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from re import _constants as C  # type: ignore[attr-defined]  # the parser sre compiles from
from re import _parser as P  # type: ignore[attr-defined]
from typing import Any

# Bounded nesting is allowed while the choices it creates per start position stay this small.
MAX_NESTED_CHOICES = 1000

# Characters every character class is probed with to decide overlap and inclusion.
_PROBES = [chr(i) for i in range(128)] + list("éßΩ中٣\u00a0\u2028")

CharTest = Callable[[str], bool]

_CATEGORIES: dict[Any, CharTest] = {
    C.CATEGORY_DIGIT: str.isdecimal,
    C.CATEGORY_NOT_DIGIT: lambda ch: not ch.isdecimal(),
    C.CATEGORY_SPACE: str.isspace,
    C.CATEGORY_NOT_SPACE: lambda ch: not ch.isspace(),
    C.CATEGORY_WORD: lambda ch: ch.isalnum() or ch == "_",
    C.CATEGORY_NOT_WORD: lambda ch: not (ch.isalnum() or ch == "_"),
    C.CATEGORY_LINEBREAK: lambda ch: ch == "\n",
    C.CATEGORY_NOT_LINEBREAK: lambda ch: ch != "\n",
}


class UnsafeRegex(ValueError):
    """The pattern may backtrack catastrophically; the message says which construct and why."""


def check(pattern: str, flags: int = 0) -> None:
    """Raise UnsafeRegex when `pattern` contains a construct that can backtrack super-linearly."""
    try:
        parsed = P.parse(pattern, flags)
    except re.error:
        return  # compiling reports the syntax error with its position
    ignore_case = bool((flags | parsed.state.flags) & re.IGNORECASE)
    _Screen(ignore_case).sequence(list(parsed), final=True)


class _Screen:
    def __init__(self, ignore_case: bool) -> None:
        self.ignore_case = ignore_case

    # ------------------------------------------------------------------ character sets

    def chars(self, items: list[Any]) -> set[str]:
        """The probe characters any element of `items` can consume (over-approximated)."""
        found: set[str] = set()
        for op, av in items:
            if op in (C.LITERAL, C.NOT_LITERAL, C.IN, C.ANY):
                found |= {ch for ch in _PROBES if self._single(op, av)(ch)}
            elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
                found |= self.chars(list(av[2]))
            elif op == C.SUBPATTERN:
                found |= self.chars(list(av[3]))
            elif op == C.ATOMIC_GROUP:
                found |= self.chars(list(av))
            elif op == C.BRANCH:
                for branch in av[1]:
                    found |= self.chars(list(branch))
            elif op == C.GROUPREF_EXISTS:
                for branch in av[1:]:
                    if branch is not None:
                        found |= self.chars(list(branch))
        return found

    def first_chars(self, items: list[Any]) -> set[str]:
        """The probe characters a match of `items` can start with (over-approximated)."""
        found: set[str] = set()
        for op, av in items:
            if op in (C.AT, C.ASSERT, C.ASSERT_NOT):
                continue  # zero-width: look further
            if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
                found |= self.first_chars(list(av[2]))
                if av[0] > 0:
                    return found
                continue
            if op == C.SUBPATTERN:
                return found | self.first_chars(list(av[3]))
            if op == C.BRANCH:
                for branch in av[1]:
                    found |= self.first_chars(list(branch))
                return found
            return found | self.chars([(op, av)])
        return found

    def nullable(self, items: list[Any]) -> bool:
        """True when `items` can match the empty string (over-approximated)."""
        for op, av in items:
            if op in (C.AT, C.ASSERT, C.ASSERT_NOT):
                continue
            if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
                if av[0] == 0 or self.nullable(list(av[2])):
                    continue
                return False
            if op == C.SUBPATTERN:
                if self.nullable(list(av[3])):
                    continue
                return False
            if op == C.BRANCH:
                if any(self.nullable(list(b)) for b in av[1]):
                    continue
                return False
            return False
        return True

    def _single(self, op: Any, av: Any) -> CharTest:
        if op == C.ANY:
            return lambda ch: ch != "\n"
        if op == C.LITERAL:
            return lambda ch: self._same(ch, chr(av))
        if op == C.NOT_LITERAL:
            return lambda ch: not self._same(ch, chr(av))
        tests: list[CharTest] = []
        negate = False
        for item_op, item_av in av:
            if item_op == C.NEGATE:
                negate = True
            elif item_op == C.LITERAL:
                tests.append(functools.partial(self._same, c=chr(item_av)))
            elif item_op == C.RANGE:
                tests.append(functools.partial(self._in_range, bounds=item_av))
            elif item_op == C.CATEGORY:
                tests.append(_CATEGORIES.get(item_av, lambda ch: True))
            else:
                tests.append(lambda ch: True)  # unknown: assume it can match anything
        return lambda ch: any(t(ch) for t in tests) != negate

    def _in_range(self, ch: str, bounds: tuple[int, int]) -> bool:
        return any(bounds[0] <= ord(v) <= bounds[1] for v in self._variants(ch))

    def _variants(self, ch: str) -> set[str]:
        return {v for v in (ch, ch.lower(), ch.upper()) if len(v) == 1} if self.ignore_case else {ch}

    def _same(self, ch: str, c: str) -> bool:
        return c in self._variants(ch) or (self.ignore_case and ch.lower() == c.lower())

    # ------------------------------------------------------------------ structure

    def sequence(self, items: list[Any], final: bool) -> None:
        """Screen a sequence; `final`: nothing follows it in the pattern, so its last element
        succeeds whenever it is reached."""
        flat = self._flatten(items)
        for index, (op, av) in enumerate(flat):
            last = final and index == len(flat) - 1
            if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
                _, high, body = av
                self._nested(list(body), high)
                self.sequence(list(body), final=False)
                if high == C.MAXREPEAT and not last:
                    self._followers(flat, index, final)
            elif op == C.BRANCH:
                for branch in av[1]:
                    self.sequence(list(branch), final=last)
            elif op in (C.ASSERT, C.ASSERT_NOT):
                self.sequence(list(av[1]), final=True)
            elif op == C.ATOMIC_GROUP:
                self.sequence(list(av), final=last)
            elif op in (C.GROUPREF, C.GROUPREF_EXISTS):
                raise UnsafeRegex("backreferences are not allowed (they can make matching take exponential time)")

    def _flatten(self, items: list[Any]) -> list[Any]:
        # A plain group is its content, in sequence with what surrounds it.
        flat: list[Any] = []
        for op, av in items:
            if op == C.SUBPATTERN:
                flat.extend(self._flatten(list(av[3])))
            else:
                flat.append((op, av))
        return flat

    def _nested(self, body: list[Any], outer_max: int) -> None:
        if outer_max <= 1:
            return
        choices = 1
        for op, av in self._walk(body):
            if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT) and av[0] != av[1]:
                if outer_max == C.MAXREPEAT or av[1] == C.MAXREPEAT:
                    raise UnsafeRegex(
                        "a quantifier inside a quantified group (like '(a+)+' or '(\\w+\\s?)*') can backtrack "
                        "catastrophically; quantify the group or its content, not both"
                    )
                choices *= av[1] - av[0] + 1
            elif op == C.BRANCH:
                firsts = [self.first_chars(list(b)) for b in av[1]]
                empty = [self.nullable(list(b)) for b in av[1]]
                overlap = any(
                    (firsts[i] & firsts[j]) or (empty[i] and empty[j])
                    for i in range(len(firsts))
                    for j in range(i + 1, len(firsts))
                )
                if overlap and outer_max == C.MAXREPEAT:
                    raise UnsafeRegex(
                        "a repeated alternation whose branches can start with the same character (like "
                        "'(a|ab)*') can backtrack catastrophically; make the branches start differently"
                    )
                choices *= len(firsts)
        if outer_max != C.MAXREPEAT and choices > 1 and choices**outer_max > MAX_NESTED_CHOICES:
            raise UnsafeRegex(
                f"nested quantifiers allow more than {MAX_NESTED_CHOICES} ways to match at one position; "
                "reduce the repeat counts"
            )

    def _walk(self, items: list[Any]) -> list[Any]:
        out: list[Any] = []
        for op, av in items:
            out.append((op, av))
            if op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
                out.extend(self._walk(list(av[2])))
            elif op == C.SUBPATTERN:
                out.extend(self._walk(list(av[3])))
            elif op == C.ATOMIC_GROUP:
                out.extend(self._walk(list(av)))
            elif op == C.BRANCH:
                for branch in av[1]:
                    out.extend(self._walk(list(branch)))
            elif op in (C.ASSERT, C.ASSERT_NOT):
                out.extend(self._walk(list(av[1])))
        return out

    def _followers(self, flat: list[Any], index: int, final: bool) -> None:
        """An unbounded repeat at `index`: reject when a later unbounded repeat can take over
        the same characters with nothing in between that this one cannot also consume."""
        mine = self.chars([flat[index]])
        for later_index in range(index + 1, len(flat)):
            op, av = flat[later_index]
            if op in (C.AT, C.ASSERT, C.ASSERT_NOT):
                continue
            is_repeat = op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT)
            if is_repeat and av[1] == C.MAXREPEAT:
                if final and later_index == len(flat) - 1:
                    return  # a trailing repeat: reaching it means the match succeeded
                if mine & self.chars([(op, av)]):
                    raise UnsafeRegex(
                        "two unbounded quantifiers that can match the same characters (like '.*.*', "
                        "'\\w+\\w+' or '.*a.*b') can backtrack polynomially on long text; the search is not "
                        "anchored, so drop a leading '.*', or use a narrower class such as '[^ ]*'"
                    )
                continue
            if is_repeat and av[0] == 0:
                continue  # optional: it can be skipped, so it separates nothing
            if not self.chars([(op, av)]) <= mine:
                return  # a mandatory element this repeat cannot consume ends the ambiguity
