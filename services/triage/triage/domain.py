"""Triage decisions, pure (no I/O): the category tree, the ordered rule set, impact and urgency
with their reasons, and the impact x urgency priority matrix. Every configuration is validated
here, and a fault names the rule and the field at fault."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cached_property
from typing import Any, Protocol

import re2
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from opsledger.events.common import ImpactLevel, Severity
from triage.default_rules import DEFAULT_RULE_SPECS


class ConfigError(ValueError):
    """A configuration that must not be put in force; `where` names the rule/field at fault."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = where
        self.message = message


# --------------------------------------------------------------------------- categories

DEFAULT_FALLBACK_CATEGORY = "Other"

DEFAULT_CATEGORIES: dict[str, list[str]] = {
    "Network": ["Connectivity", "DNS", "Load balancer", "Firewall", "Latency"],
    "Database": ["Availability", "Performance", "Replication", "Capacity"],
    "Messaging": ["Broker", "Consumer lag", "Backlog"],
    "Application": ["Availability", "Errors", "Latency", "Crash", "Functional defect"],
    "Infrastructure/Server": ["Host down", "CPU", "Memory", "Disk", "Process", "Clock", "Container platform"],
    "Storage": ["Capacity", "Performance", "Availability", "Backup"],
    "Security": ["Intrusion", "Vulnerability", "Malware", "Data exposure"],
    "Access": ["Authentication", "Authorization", "Certificates"],
    "Hardware": ["Failure", "Power", "Cooling"],
    DEFAULT_FALLBACK_CATEGORY: [],
}

_NAME = re.compile(r"^[^\s].{0,98}[^\s]$|^[^\s]$")
# Bounds that keep validation and evaluation cheap (both run on the event loop).
MAX_CATEGORIES = 200
MAX_SUBCATEGORIES = 200
MAX_RULES = 500
MAX_KEYWORDS = 200


@dataclass(frozen=True)
class CategoryTree:
    """category -> subcategories; `fallback` is the category of an incident no rule classifies."""

    version: int
    categories: Mapping[str, tuple[str, ...]]
    fallback: str = DEFAULT_FALLBACK_CATEGORY

    def check(self, category: str, subcategory: str | None, where: str) -> None:
        """Raise ConfigError unless category (and subcategory, when given) exist in the tree."""
        if category not in self.categories:
            raise ConfigError(
                f"{where}.category", f"unknown category {category!r}; known: {', '.join(sorted(self.categories))}"
            )
        if subcategory is not None and subcategory not in self.categories[category]:
            known = ", ".join(self.categories[category]) or "none"
            raise ConfigError(
                f"{where}.subcategory", f"unknown subcategory {subcategory!r} of {category!r}; known: {known}"
            )

    def as_json(self) -> dict[str, Any]:
        return {"categories": {k: list(v) for k, v in self.categories.items()}, "fallback": self.fallback}


def build_tree(version: int, categories: Mapping[str, Sequence[str]], fallback: str | None = None) -> CategoryTree:
    """Validate a category tree: non-empty, names 1-100 characters, no duplicates, fallback present."""
    if not categories:
        raise ConfigError("categories", "the category tree is empty")
    if len(categories) > MAX_CATEGORIES:
        raise ConfigError("categories", f"{len(categories)} categories; at most {MAX_CATEGORIES} are allowed")
    fallback = fallback or DEFAULT_FALLBACK_CATEGORY
    seen_lower: dict[str, str] = {}
    tree: dict[str, tuple[str, ...]] = {}
    for name, subs in categories.items():
        if not _NAME.match(name):
            raise ConfigError(f"categories[{name!r}]", "a name is 1-100 characters without surrounding spaces")
        if name.lower() in seen_lower:
            raise ConfigError(f"categories[{name!r}]", f"duplicates {seen_lower[name.lower()]!r} (names ignore case)")
        seen_lower[name.lower()] = name
        if len(subs) > MAX_SUBCATEGORIES:
            raise ConfigError(f"categories[{name!r}]", f"{len(subs)} subcategories; at most {MAX_SUBCATEGORIES}")
        sub_seen: set[str] = set()
        for sub in subs:
            if not _NAME.match(sub):
                raise ConfigError(
                    f"categories[{name!r}][{sub!r}]", "a name is 1-100 characters without surrounding spaces"
                )
            if sub.lower() in sub_seen:
                raise ConfigError(f"categories[{name!r}][{sub!r}]", "duplicate subcategory")
            sub_seen.add(sub.lower())
        tree[name] = tuple(subs)
    if fallback not in tree:
        raise ConfigError("fallback", f"fallback category {fallback!r} is not in the tree")
    return CategoryTree(version, tree, fallback)


DEFAULT_TREE = build_tree(1, DEFAULT_CATEGORIES)

# --------------------------------------------------------------------------- rules


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class RuleConditions(_Spec):
    """All given conditions must hold (AND); a list matches when any of its values does (OR)."""

    source: list[str] | None = Field(default=None, min_length=1, max_length=100)
    service: list[str] | None = Field(default=None, min_length=1, max_length=500)
    environment: list[str] | None = Field(default=None, min_length=1, max_length=100)
    severity: list[Severity] | None = Field(default=None, min_length=1)
    labels: dict[str, str] = Field(default_factory=dict, max_length=64)  # value "*": the label is present
    # Any of them, as whole words, in title or description (see keyword_pattern).
    keywords: list[str] | None = Field(default=None, min_length=1, max_length=MAX_KEYWORDS)
    title_regex: str | None = Field(default=None, min_length=1, max_length=500)
    description_regex: str | None = Field(default=None, min_length=1, max_length=500)

    @field_validator("keywords")
    @classmethod
    def _usable_keywords(cls, value: list[str] | None) -> list[str] | None:
        for k in value or ():
            core = k.strip().strip("*")
            if not any(ch.isalnum() for ch in core):
                raise ValueError(f"keyword {k!r} has no letter or digit")
            if "*" in core:
                raise ValueError(f"keyword {k!r}: '*' is allowed only at its start or end")
            if len(k) > 200:
                raise ValueError(f"keyword {k[:20]!r}...: at most 200 characters")
        return value


class RuleActions(_Spec):
    category: str | None = Field(default=None, min_length=1, max_length=100)
    subcategory: str | None = Field(default=None, min_length=1, max_length=100)
    affected_service: str | None = Field(default=None, min_length=1, max_length=200)
    # Strict: `true` or "1" for an impact is a mistake to report, not to coerce.
    impact: StrictInt | None = Field(default=None, ge=1, le=3)
    urgency: StrictInt | None = Field(default=None, ge=1, le=3)


class RuleSpec(_Spec):
    """One rule as stored, published and exchanged through the API."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,99}$")
    description: str | None = Field(default=None, max_length=1000)
    when: RuleConditions = Field(default_factory=RuleConditions)
    set: RuleActions


SETTABLE = ("category", "subcategory", "affected_service", "impact", "urgency")


# CamelCase alert names (KubePodCrashLooping, HighErrorRate) are matched word by word too.
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=[0-9])")
# Rule regexes run on RE2, which matches in time linear in the text: a pattern typed into a rule
# can never hang the consumer and the API (Python's `re` backtracks: `(a+)+$` takes minutes on a
# few dozen characters, and it cannot be interrupted). RE2 is also the syntax Prometheus and
# Alertmanager users already write. Errors are reported to the caller, not logged by the engine.
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.case_sensitive = False  # alert titles are written by many hands
_RE2_OPTIONS.log_errors = False
# A version stored before rules ran on RE2 may use syntax RE2 lacks: it still loads (triage must
# never stop over its own stored config), on Python's `re` over at most this much text.
LEGACY_REGEX_TEXT_LIMIT = 4096


class Searcher(Protocol):
    def search(self, text: str) -> object | None: ...


@dataclass(frozen=True)
class _LegacyRegex:
    pattern: re.Pattern[str]

    def search(self, text: str) -> object | None:
        return self.pattern.search(text[:LEGACY_REGEX_TEXT_LIMIT])


def searchable(text: str) -> str:
    """`text` lowercased, followed by the same with CamelCase words split apart when that differs."""
    split = _CAMEL.sub(" ", text)
    return text.lower() if split == text else f"{text.lower()}\n{split.lower()}"


def keyword_pattern(keyword: str) -> str:
    """A keyword matches whole words, ignoring case: 'dns' matches "DNS lookups fail" and
    "CoreDNSDown" but not "ddnsd"; spaces match any run of separators ('error rate' matches
    "error_rate"); a '*' at the start or end lets it match inside a word ('crash*' matches
    "CrashLooping")."""
    k = keyword.strip().lower()
    core = k.strip("*").strip()
    first, *rest = (re.escape(word) for word in core.split())
    # An edge that is not a letter or digit is a boundary already ('cve-' matches "CVE-2024-1").
    # The start boundary is checked after the first word, looking back past it: a pattern that
    # begins with a literal lets the engine skip to where it can match, where a leading look-behind
    # made it try every branch at every character (23 times slower over the default rules).
    start = "" if k.startswith("*") or not core[0].isalnum() else rf"(?<![^\W_]{first})"
    end = "" if k.endswith("*") or not core[-1].isalnum() else r"(?![^\W_])"
    return first + start + "".join(r"[\W_]+" + word for word in rest) + end


@dataclass(frozen=True)
class Rule:
    """A validated rule with its regular expressions compiled."""

    spec: RuleSpec
    title_re: Searcher | None = None
    description_re: Searcher | None = None
    keywords_re: re.Pattern[str] | None = None  # built by keyword_pattern: no backtracking traps

    @property
    def id(self) -> str:
        return self.spec.id

    def sets(self) -> set[str]:
        return {f for f in SETTABLE if getattr(self.spec.set, f) is not None}

    def matches(self, facts: Facts) -> bool:
        w = self.spec.when
        # Cheapest conditions first; regular expressions last.
        if w.source is not None and not _any_equal(facts.source, w.source):
            return False
        if w.service is not None and not _any_equal(facts.service, w.service):
            return False
        if w.environment is not None and not _any_equal(facts.environment, w.environment):
            return False
        if w.severity is not None and facts.severity not in w.severity:
            return False
        for key, wanted in w.labels.items():
            if key not in facts.labels or (wanted != "*" and facts.labels[key] != wanted):
                return False
        if self.keywords_re is not None and self.keywords_re.search(facts.keyword_text) is None:
            return False
        if self.title_re is not None and not self.title_re.search(facts.title):
            return False
        return not (self.description_re is not None and not self.description_re.search(facts.description or ""))

    def explain(self, facts: Facts) -> str:
        """Which of this rule's conditions held for `facts`, e.g. "keyword 'postgres*' (postgres)"."""
        w = self.spec.when
        parts: list[str] = []
        for name in ("source", "service", "environment"):
            if getattr(w, name) is not None:
                parts.append(f"{name} {getattr(facts, name)}")
        if w.severity is not None:
            parts.append(f"severity {facts.severity}")
        parts.extend(f"label {k}={facts.labels.get(k)}" for k in w.labels)
        if self.keywords_re is not None:
            found = self.keywords_re.search(facts.keyword_text)
            if found is not None:
                parts.append(f"keyword {found.group(0)!r}")
        if w.title_regex is not None:
            parts.append(f"title matches {w.title_regex!r}")
        if w.description_regex is not None:
            parts.append(f"description matches {w.description_regex!r}")
        return ", ".join(parts) or "no conditions (matches every incident)"


def _any_equal(value: str | None, wanted: Sequence[str]) -> bool:
    return value is not None and value.lower() in {w.lower() for w in wanted}


@dataclass(frozen=True)
class RuleSet:
    version: int
    rules: tuple[Rule, ...]

    def as_json(self) -> list[dict[str, Any]]:
        return [r.spec.model_dump(mode="json", exclude_none=True) for r in self.rules]


def parse_rules(raw: Sequence[Any]) -> list[RuleSpec]:
    """Parse rules from JSON; a fault names the rule (by position and id) and the field."""
    specs: list[RuleSpec] = []
    for i, item in enumerate(raw):
        rid = item.get("id") if isinstance(item, dict) else None
        try:
            specs.append(RuleSpec.model_validate(item))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"]) or "rule"
            raise ConfigError(f"rules[{i}]{f' (id {rid!r})' if rid else ''}.{loc}", err["msg"]) from exc
    return specs


def build_rules(version: int, specs: Sequence[RuleSpec], tree: CategoryTree, *, stored: bool = False) -> RuleSet:
    """Validate an ordered rule set against a category tree: not empty, unique ids, every rule
    sets something, regular expressions compile under RE2, categories exist, and no rule is
    shadowed by an earlier one for everything it sets. `stored`: a version accepted earlier is
    being reloaded; checks added since must not take it out of force (that would stop triage), so
    only what compiling needs is checked."""
    if not specs:
        raise ConfigError("rules", "the rule set is empty; give at least one rule")
    if len(specs) > MAX_RULES and not stored:
        raise ConfigError("rules", f"{len(specs)} rules; at most {MAX_RULES} are allowed")
    rules: list[Rule] = []
    ids: dict[str, int] = {}
    for i, spec in enumerate(specs):
        where = f"rules[{i}] (id {spec.id!r})"
        if spec.id in ids:
            raise ConfigError(f"{where}.id", f"duplicate rule id; rules[{ids[spec.id]}] has it too")
        ids[spec.id] = i
        actions = spec.set
        if not any(getattr(actions, f) is not None for f in SETTABLE):
            raise ConfigError(f"{where}.set", f"the rule sets nothing; set at least one of {', '.join(SETTABLE)}")
        if actions.subcategory is not None and actions.category is None:
            raise ConfigError(f"{where}.set.subcategory", "a subcategory needs its category in the same rule")
        if actions.category is not None:
            tree.check(actions.category, actions.subcategory, f"{where}.set")
        compiled = {
            name: _compile(getattr(spec.when, name), f"{where}.when.{name}", stored=stored)
            for name in ("title_regex", "description_regex")
        }
        keywords = re.compile("|".join(keyword_pattern(k) for k in spec.when.keywords)) if spec.when.keywords else None
        rules.append(Rule(spec, compiled["title_regex"], compiled["description_regex"], keywords))
    for later_index, later in enumerate(rules):
        _check_not_shadowed(rules[:later_index], later, later_index)
    return RuleSet(version, tuple(rules))


def _compile(pattern: str | None, where: str, stored: bool = False) -> Searcher | None:
    if pattern is None:
        return None
    try:
        return re2.compile(pattern, _RE2_OPTIONS)  # type: ignore[no-any-return]
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        if stored:
            try:
                return _LegacyRegex(re.compile(pattern, re.IGNORECASE))
            except re.error:
                pass
        raise ConfigError(
            where,
            f"invalid regular expression {pattern!r}: {reason} (RE2 syntax, as in Prometheus: no backreferences"
            " or lookaround)",
        ) from None


def _subsumes(general: RuleConditions, specific: RuleConditions) -> bool:
    """True when every incident `specific` matches is surely matched by `general` too
    (conservative: False when in doubt)."""
    for name in ("source", "service", "environment"):
        g, s = getattr(general, name), getattr(specific, name)
        if g is not None and (s is None or not {v.lower() for v in s} <= {v.lower() for v in g}):
            return False
    if general.severity is not None and (
        specific.severity is None or not set(specific.severity) <= set(general.severity)
    ):
        return False
    for key, value in general.labels.items():
        if key not in specific.labels or (value != "*" and specific.labels[key] != value):
            return False
    if general.keywords is not None and (
        specific.keywords is None or not {k.lower() for k in specific.keywords} <= {k.lower() for k in general.keywords}
    ):
        return False
    for name in ("title_regex", "description_regex"):
        g_re = getattr(general, name)
        if g_re is not None and g_re != getattr(specific, name):
            return False
    return True


def _check_not_shadowed(earlier: Sequence[Rule], rule: Rule, index: int) -> None:
    # First match wins per field, so a field an earlier, at-least-as-general rule sets can
    # never come from this rule; when that holds for every field it sets, the rule is dead.
    # Category and subcategory travel together, so they count as one field here.
    def fields(r: Rule) -> set[str]:
        return {"category" if f == "subcategory" else f for f in r.sets()}

    covered: dict[str, str] = {}
    for e in earlier:
        if _subsumes(e.spec.when, rule.spec.when):
            for f in fields(e):
                covered.setdefault(f, e.id)
    mine = fields(rule)
    if mine and mine <= covered.keys():
        by = ", ".join(sorted({covered[f] for f in mine}))
        raise ConfigError(
            f"rules[{index}] (id {rule.id!r}).when",
            f"overlaps earlier rule(s) {by}: they match every incident this rule matches and already set "
            f"{', '.join(sorted(mine))}, so this rule could never apply",
        )


# --------------------------------------------------------------------------- priority matrix

LEVELS = (1, 2, 3)
PRIORITIES = ("P1", "P2", "P3", "P4", "P5")
DEFAULT_MATRIX_CELLS: dict[str, str] = {
    "1/1": "P1",
    "1/2": "P2",
    "2/1": "P2",
    "1/3": "P3",
    "2/2": "P3",
    "3/1": "P3",
    "2/3": "P4",
    "3/2": "P4",
    "3/3": "P5",
}


@dataclass(frozen=True)
class Matrix:
    """impact (1 high..3 low) x urgency (1 high..3 low) -> P1..P5."""

    version: int
    cells: Mapping[tuple[int, int], str]

    def priority(self, impact: int, urgency: int) -> str:
        return self.cells[(impact, urgency)]

    def as_json(self) -> dict[str, str]:
        return {f"{i}/{u}": self.cells[(i, u)] for i in LEVELS for u in LEVELS}


def build_matrix(version: int, raw: Mapping[str, Any]) -> Matrix:
    """Validate a matrix given as {"impact/urgency": "P1".."P5" or 1..5}: all nine cells, nothing
    else, and never a lower priority for a higher impact or urgency."""
    cells: dict[tuple[int, int], str] = {}
    for key, value in raw.items():
        m = re.fullmatch(r"([123])/([123])", str(key))
        if m is None:
            raise ConfigError(f"matrix[{key!r}]", "a cell is named 'impact/urgency' with both in 1..3, e.g. '1/2'")
        cells[(int(m[1]), int(m[2]))] = _priority_of(value, f"matrix[{key!r}]")
    missing = [f"{i}/{u}" for i in LEVELS for u in LEVELS if (i, u) not in cells]
    if missing:
        raise ConfigError("matrix", f"missing cells {', '.join(missing)}; all nine impact/urgency pairs are needed")
    for i in LEVELS:
        for u in LEVELS:
            for ni, nu in ((i + 1, u), (i, u + 1)):
                if (ni, nu) in cells and _rank(cells[(ni, nu)]) < _rank(cells[(i, u)]):
                    raise ConfigError(
                        f"matrix['{ni}/{nu}']",
                        f"{cells[(ni, nu)]} is more urgent than {cells[(i, u)]} at '{i}/{u}'; a lower impact or "
                        "urgency must never give a higher priority",
                    )
    return Matrix(version, cells)


def _priority_of(value: Any, where: str) -> str:
    if isinstance(value, bool):
        raise ConfigError(where, f"expected P1..P5 or 1..5, got {value!r}")
    if isinstance(value, int) and 1 <= value <= 5:
        return f"P{value}"
    if isinstance(value, str) and value.upper() in PRIORITIES:
        return value.upper()
    raise ConfigError(where, f"expected P1..P5 or 1..5, got {value!r}")


def _rank(priority: str) -> int:
    return int(priority[1:])


DEFAULT_MATRIX = build_matrix(1, DEFAULT_MATRIX_CELLS)


def is_major(priority: str) -> bool:
    return priority == "P1"


# --------------------------------------------------------------------------- facts and policy

SEVERITY_RANK = {Severity.INFO: 0, Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3, Severity.CRITICAL: 4}
SEVERITY_URGENCY = {Severity.CRITICAL: 1, Severity.HIGH: 2, Severity.MEDIUM: 2, Severity.LOW: 3, Severity.INFO: 3}
BUSINESS_IMPACT = {ImpactLevel.HIGH: 1, ImpactLevel.MEDIUM: 2, ImpactLevel.LOW: 3}


def higher_severity(a: Severity, b: Severity) -> Severity:
    return a if SEVERITY_RANK[a] >= SEVERITY_RANK[b] else b


@dataclass(frozen=True)
class Facts:
    """What triage knows of an incident: what intake logged, plus what correlation and the
    reporter added since."""

    source: str
    title: str
    severity: Severity  # the highest seen so far
    initial_severity: Severity
    description: str | None = None
    service: str | None = None
    environment: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    occurrence_count: int = 1
    business_impact: ImpactLevel | None = None
    urgency_hint: int | None = None

    @cached_property
    def keyword_text(self) -> str:
        """Title and description as keywords search them (computed once per evaluation)."""
        return searchable(self.title) + "\n" + searchable(self.description or "")

    def as_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "title": self.title,
            "severity": str(self.severity),
            "initial_severity": str(self.initial_severity),
            "description": self.description,
            "service": self.service,
            "environment": self.environment,
            "labels": dict(self.labels),
            "occurrence_count": self.occurrence_count,
            "business_impact": str(self.business_impact) if self.business_impact else None,
            "urgency_hint": self.urgency_hint,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Facts:
        return cls(
            source=raw["source"],
            title=raw["title"],
            severity=Severity(raw["severity"]),
            initial_severity=Severity(raw["initial_severity"]),
            description=raw.get("description"),
            service=raw.get("service"),
            environment=raw.get("environment"),
            labels=dict(raw.get("labels") or {}),
            occurrence_count=int(raw.get("occurrence_count", 1)),
            business_impact=ImpactLevel(raw["business_impact"]) if raw.get("business_impact") else None,
            urgency_hint=raw.get("urgency_hint"),
        )


@dataclass(frozen=True)
class Policy:
    """The configuration in force. `count_thresholds`: each one the correlated-alert count
    reaches raises impact one level."""

    tree: CategoryTree = DEFAULT_TREE
    rules: RuleSet | None = None
    matrix: Matrix = DEFAULT_MATRIX
    criticality: Mapping[str, int] = field(default_factory=dict)  # service -> impact 1..3
    count_thresholds: tuple[int, ...] = (10, 50)
    default_impact: int = 2

    @property
    def rule_set(self) -> RuleSet:
        return self.rules if self.rules is not None else DEFAULT_RULES


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Categorization:
    category: str
    subcategory: str | None
    affected_service: str | None
    rule_id: str | None  # None: no rule set the category, the fallback applies
    rule_set_version: int
    matched_rules: tuple[str, ...] = ()
    matched_on: str | None = None  # which conditions of the category rule held, e.g. "keyword 'dns'"


@dataclass(frozen=True)
class Prioritization:
    priority: str
    impact: int
    urgency: int
    impact_reasons: tuple[str, ...]
    urgency_reasons: tuple[str, ...]
    matrix_version: int
    impact_rule_id: str | None = None
    urgency_rule_id: str | None = None
    service_criticality: int | None = None

    @property
    def major(self) -> bool:
        return is_major(self.priority)

    @property
    def rule_id(self) -> str | None:
        return self.impact_rule_id or self.urgency_rule_id


@dataclass(frozen=True)
class Decision:
    categorization: Categorization
    prioritization: Prioritization


def evaluate(facts: Facts, policy: Policy) -> Decision:
    """The automatic decision for an incident: rules (first match wins per field), then impact
    and urgency with their reasons, then the matrix."""
    rule_set = policy.rule_set
    chosen: dict[str, tuple[Any, str]] = {}
    matched: list[str] = []
    why: dict[str, str] = {}  # rule id -> the conditions that held, for the rules that decided something
    for rule in rule_set.rules:
        if not rule.matches(facts):
            continue
        matched.append(rule.id)
        if any(f not in chosen for f in rule.sets()):
            why[rule.id] = rule.explain(facts)
        actions = rule.spec.set
        if actions.category is not None and "category" not in chosen:
            # Category and subcategory come from the same rule so they never disagree.
            chosen["category"] = (actions.category, rule.id)
            chosen["subcategory"] = (actions.subcategory, rule.id)
        for name in ("affected_service", "impact", "urgency"):
            value = getattr(actions, name)
            if value is not None and name not in chosen:
                chosen[name] = (value, rule.id)
    category, category_rule = chosen.get("category", (policy.tree.fallback, None))
    subcategory = chosen.get("subcategory", (None, None))[0]
    if category not in policy.tree.categories:
        # The tree changed under the rules (never by the API, which checks both ways).
        category, subcategory, category_rule = policy.tree.fallback, None, None
    affected = chosen.get("affected_service", (facts.service, None))[0]
    categorization = Categorization(
        category,
        subcategory,
        affected,
        category_rule,
        rule_set.version,
        tuple(matched),
        why.get(category_rule) if category_rule else None,
    )
    impact, impact_reasons, criticality = _impact(facts, policy, chosen.get("impact"), affected, why)
    urgency, urgency_reasons = _urgency(facts, chosen.get("urgency"), why)
    prioritization = Prioritization(
        priority=policy.matrix.priority(impact, urgency),
        impact=impact,
        urgency=urgency,
        impact_reasons=tuple(impact_reasons),
        urgency_reasons=tuple(urgency_reasons),
        matrix_version=policy.matrix.version,
        impact_rule_id=chosen["impact"][1] if "impact" in chosen else None,
        urgency_rule_id=chosen["urgency"][1] if "urgency" in chosen else None,
        service_criticality=criticality,
    )
    return Decision(categorization, prioritization)


def _impact(
    facts: Facts, policy: Policy, from_rule: tuple[int, str] | None, affected: str | None, why: Mapping[str, str]
) -> tuple[int, list[str], int | None]:
    # Precedence: what the reporter said about the business > an explicit rule > the service's
    # criticality > the default; then widespread correlation raises it.
    reasons: list[str] = []
    criticality = _criticality(policy.criticality, affected or facts.service)
    if facts.business_impact is not None:
        impact = BUSINESS_IMPACT[facts.business_impact]
        reasons.append(f"reporter stated {facts.business_impact} business impact -> {impact}")
    elif from_rule is not None:
        impact = from_rule[0]
        reasons.append(f"rule {from_rule[1]} sets impact {impact} ({why.get(from_rule[1], 'matched')})")
    elif criticality is not None:
        impact = criticality
        reasons.append(f"service {affected or facts.service} has criticality {impact}")
    else:
        impact = policy.default_impact
        reasons.append(f"default impact {impact}")
    reached = [t for t in sorted(policy.count_thresholds) if facts.occurrence_count >= t]
    if reached and impact > 1:
        raised = max(1, impact - len(reached))
        reasons.append(f"{facts.occurrence_count} correlated alerts (>= {reached[-1]}) raise impact to {raised}")
        impact = raised
    return impact, reasons, criticality


def _criticality(criticality: Mapping[str, int], service: str | None) -> int | None:
    if service is None:
        return None
    lowered = {k.lower(): v for k, v in criticality.items()}
    return lowered.get(service.lower())


def _urgency(facts: Facts, from_rule: tuple[int, str] | None, why: Mapping[str, str]) -> tuple[int, list[str]]:
    # Precedence: the urgency hint (reporter or integration) > an explicit rule > severity;
    # a severity that correlation raised since logging always escalates.
    reasons: list[str] = []
    if facts.urgency_hint is not None:
        urgency = facts.urgency_hint
        reasons.append(f"urgency hint {urgency}")
    elif from_rule is not None:
        urgency = from_rule[0]
        reasons.append(f"rule {from_rule[1]} sets urgency {urgency} ({why.get(from_rule[1], 'matched')})")
    else:
        urgency = SEVERITY_URGENCY[facts.initial_severity]
        reasons.append(f"severity {facts.initial_severity} -> urgency {urgency}")
    if SEVERITY_RANK[facts.severity] > SEVERITY_RANK[facts.initial_severity]:
        escalated = SEVERITY_URGENCY[facts.severity]
        if escalated < urgency:
            reasons.append(f"correlated alert raised severity to {facts.severity} -> urgency {escalated}")
            urgency = escalated
    return urgency, reasons


# --------------------------------------------------------------------------- overrides


@dataclass(frozen=True)
class CategoryOverride:
    category: str
    subcategory: str | None
    reason: str
    actor: str


@dataclass(frozen=True)
class PriorityOverride:
    priority: str
    reason: str
    actor: str


@dataclass(frozen=True)
class Overrides:
    category: CategoryOverride | None = None
    priority: PriorityOverride | None = None


@dataclass(frozen=True)
class Effective:
    """What the incident's triage is, automation with any override applied on top."""

    category: str
    subcategory: str | None
    priority: str
    category_overridden: bool
    priority_overridden: bool


def effective(decision: Decision, overrides: Overrides) -> Effective:
    c, p = overrides.category, overrides.priority
    return Effective(
        category=c.category if c else decision.categorization.category,
        subcategory=c.subcategory if c else decision.categorization.subcategory,
        priority=p.priority if p else decision.prioritization.priority,
        category_overridden=c is not None,
        priority_overridden=p is not None,
    )


@dataclass(frozen=True)
class TriageState:
    """What triage knows of one incident (a row of triage_incidents): the facts it decided on, the
    automatic decision, the overrides in force, and the effective category and priority it last
    announced. `correlation_id` is the one of the alert or report that opened the incident."""

    facts: Facts
    decision: Decision
    overrides: Overrides
    category: str
    subcategory: str | None
    priority: str
    logged_at: datetime
    title: str
    correlation_id: str | None


def check_priority(value: str) -> str:
    """'P1'..'P5' (any case) or raise ConfigError naming the field."""
    return _priority_of(value, "priority")


# --------------------------------------------------------------------------- re-evaluation


def correlation_trigger(before: Facts, after: Facts, policy: Policy) -> str | None:
    """Why a correlated alert warrants re-evaluation (severity rose, or the occurrence count
    crossed a threshold), or None."""
    if SEVERITY_RANK[after.severity] > SEVERITY_RANK[before.severity]:
        return f"correlated alert raised severity from {before.severity} to {after.severity}"
    crossed = [t for t in policy.count_thresholds if before.occurrence_count < t <= after.occurrence_count]
    if crossed:
        return f"correlated alerts reached {after.occurrence_count} occurrences (threshold {max(crossed)})"
    return None


def with_correlation(facts: Facts, severity: Severity, occurrence_count: int) -> Facts:
    return replace(
        facts,
        severity=higher_severity(facts.severity, severity),
        occurrence_count=max(facts.occurrence_count, occurrence_count),
    )


# --------------------------------------------------------------------------- default rules


DEFAULT_RULES = build_rules(1, parse_rules(DEFAULT_RULE_SPECS), DEFAULT_TREE)


def default_bodies() -> dict[str, dict[str, Any]]:
    """The defaults of each configuration kind, as the body its PUT takes (and version 1 stores)."""
    return {
        "categories": DEFAULT_TREE.as_json(),
        "rules": {"rules": DEFAULT_RULES.as_json()},
        "matrix": {"matrix": DEFAULT_MATRIX.as_json()},
    }


def rules_using(rule_set: RuleSet, tree: CategoryTree) -> None:
    """Raise ConfigError naming the first rule whose category or subcategory the tree lacks."""
    for i, rule in enumerate(rule_set.rules):
        if rule.spec.set.category is not None:
            tree.check(rule.spec.set.category, rule.spec.set.subcategory, f"rules[{i}] (id {rule.id!r}).set")
