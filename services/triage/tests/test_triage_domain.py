"""Unit tests of triage's pure decisions: matrix, rule matching and validation, impact, urgency,
overrides and re-evaluation triggers."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from opsledger.events.common import ImpactLevel, Severity
from triage import domain
from triage.domain import ConfigError, Facts, Policy

TREE = domain.DEFAULT_TREE


def facts(**overrides: Any) -> Facts:
    base: dict[str, Any] = dict(
        source="alertmanager", title="something odd", severity=Severity.MEDIUM, initial_severity=Severity.MEDIUM
    )
    base.update(overrides)
    if "severity" in overrides and "initial_severity" not in overrides:
        base["initial_severity"] = overrides["severity"]
    return Facts(**base)


def rules(*specs: dict[str, Any], version: int = 7) -> domain.RuleSet:
    return domain.build_rules(version, domain.parse_rules(list(specs)), TREE)


def policy(*specs: dict[str, Any], **kw: Any) -> Policy:
    return Policy(rules=rules(*specs) if specs else None, **kw)


# --------------------------------------------------------------------------- matrix

DEFAULT_EXPECTED = [
    (1, 1, "P1"),
    (1, 2, "P2"),
    (2, 1, "P2"),
    (1, 3, "P3"),
    (2, 2, "P3"),
    (3, 1, "P3"),
    (2, 3, "P4"),
    (3, 2, "P4"),
    (3, 3, "P5"),
]


@pytest.mark.parametrize(("impact", "urgency", "expected"), DEFAULT_EXPECTED)
def test_default_matrix(impact: int, urgency: int, expected: str) -> None:
    assert domain.DEFAULT_MATRIX.priority(impact, urgency) == expected
    assert domain.is_major(expected) == (expected == "P1")


def test_matrix_accepts_numbers_and_normalises() -> None:
    raw: dict[str, Any] = {f"{i}/{u}": min(5, i + u - 1) for i in (1, 2, 3) for u in (1, 2, 3)}
    raw["3/3"] = "p5"
    m = domain.build_matrix(4, raw)
    assert m.version == 4
    assert m.as_json()["3/3"] == "P5"
    assert m.as_json()["2/2"] == "P3"


@pytest.mark.parametrize(
    ("change", "where", "words"),
    [
        ({"1/1": 0}, "matrix['1/1']", "expected P1..P5"),
        ({"1/1": 6}, "matrix['1/1']", "expected P1..P5"),
        ({"1/1": "P6"}, "matrix['1/1']", "expected P1..P5"),
        ({"1/1": True}, "matrix['1/1']", "expected P1..P5"),
        ({"4/1": "P1"}, "matrix['4/1']", "impact/urgency"),
        ({"x": "P1"}, "matrix['x']", "impact/urgency"),
        ({"1/1": None}, "matrix['1/1']", "expected P1..P5"),
        ({"2/1": "P1", "1/1": "P2"}, "matrix['2/1']", "never give a higher priority"),
    ],
)
def test_matrix_faults_name_the_cell(change: dict[str, Any], where: str, words: str) -> None:
    raw = {**domain.DEFAULT_MATRIX_CELLS, **change}
    with pytest.raises(ConfigError) as info:
        domain.build_matrix(2, raw)
    assert info.value.where == where
    assert words in info.value.message


def test_matrix_missing_cells_are_listed() -> None:
    raw = dict(domain.DEFAULT_MATRIX_CELLS)
    del raw["2/3"], raw["3/3"]
    with pytest.raises(ConfigError, match="missing cells 2/3, 3/3"):
        domain.build_matrix(2, raw)


cell_values = st.integers(min_value=1, max_value=5)


@st.composite
def monotonic_matrices(draw: st.DrawFn) -> dict[str, int]:
    """Random valid matrices: each cell no more urgent than its more urgent neighbours."""
    cells: dict[tuple[int, int], int] = {}
    for i in (1, 2, 3):
        for u in (1, 2, 3):
            floor = max([cells.get((i - 1, u), 1), cells.get((i, u - 1), 1)])
            cells[(i, u)] = draw(st.integers(min_value=floor, max_value=5))
    return {f"{i}/{u}": v for (i, u), v in cells.items()}


@given(monotonic_matrices())
def test_every_pair_maps_to_exactly_one_priority(raw: dict[str, int]) -> None:
    m = domain.build_matrix(3, raw)
    assert set(m.cells) == {(i, u) for i in (1, 2, 3) for u in (1, 2, 3)}
    for (i, u), p in m.cells.items():
        assert p in domain.PRIORITIES
        assert m.priority(i, u) == f"P{raw[f'{i}/{u}']}"
    # Round trip through the JSON form keeps every cell.
    assert domain.build_matrix(3, m.as_json()) == m


@given(st.dictionaries(st.sampled_from(list(domain.DEFAULT_MATRIX_CELLS)), st.integers(-3, 9), min_size=9))
def test_matrix_accepts_only_valid_cells(raw: dict[str, int]) -> None:
    in_range = all(1 <= v <= 5 for v in raw.values())
    try:
        m = domain.build_matrix(2, raw)
    except ConfigError:
        assert not in_range or any(
            raw[f"{i}/{u}"] > raw.get(f"{i + 1}/{u}", 9) or raw[f"{i}/{u}"] > raw.get(f"{i}/{u + 1}", 9)
            for i in (1, 2, 3)
            for u in (1, 2, 3)
        )
    else:
        assert in_range
        assert all(m.priority(i, u) == f"P{raw[f'{i}/{u}']}" for i in (1, 2, 3) for u in (1, 2, 3))


@given(st.sampled_from((1, 2, 3)), st.sampled_from((1, 2, 3)))
def test_default_matrix_is_monotonic(impact: int, urgency: int) -> None:
    p = int(domain.DEFAULT_MATRIX.priority(impact, urgency)[1:])
    if impact < 3:
        assert int(domain.DEFAULT_MATRIX.priority(impact + 1, urgency)[1:]) >= p
    if urgency < 3:
        assert int(domain.DEFAULT_MATRIX.priority(impact, urgency + 1)[1:]) >= p
    # The default is symmetric and depends only on impact + urgency.
    assert p == impact + urgency - 1


# --------------------------------------------------------------------------- rule matching

MATCH_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("no conditions match all", {}, {}, True),
    ("source any-of", {"source": ["grafana", "alertmanager"]}, {}, True),
    ("source mismatch", {"source": ["grafana"]}, {}, False),
    ("service case-insensitive", {"service": ["Payments"]}, {"service": "payments"}, True),
    ("service absent", {"service": ["payments"]}, {}, False),
    ("environment", {"environment": ["prod"]}, {"environment": "prod"}, True),
    ("environment mismatch", {"environment": ["prod"]}, {"environment": "staging"}, False),
    ("severity", {"severity": ["critical", "high"]}, {"severity": Severity.HIGH}, True),
    ("severity mismatch", {"severity": ["critical"]}, {"severity": Severity.HIGH}, False),
    ("label equals", {"labels": {"team": "dba"}}, {"labels": {"team": "dba", "x": "y"}}, True),
    ("label differs", {"labels": {"team": "dba"}}, {"labels": {"team": "web"}}, False),
    ("label wildcard", {"labels": {"team": "*"}}, {"labels": {"team": "web"}}, True),
    ("label wildcard absent", {"labels": {"team": "*"}}, {"labels": {}}, False),
    ("keyword in title", {"keywords": ["Postgres"]}, {"title": "postgres down"}, True),
    ("keyword in description", {"keywords": ["dns"]}, {"description": "DNS lookups fail"}, True),
    ("keyword absent", {"keywords": ["dns"]}, {"title": "disk full"}, False),
    ("title regex", {"title_regex": r"^disk \d+% full$"}, {"title": "Disk 95% full"}, True),
    ("title regex miss", {"title_regex": r"^disk \d+% full$"}, {"title": "disk is full"}, False),
    ("description regex", {"description_regex": "oom-?kill"}, {"description": "OOMKilled pod"}, True),
    ("description regex no description", {"description_regex": "x"}, {}, False),
    ("all conditions AND", {"service": ["db"], "severity": ["critical"]}, {"service": "db"}, False),
]


@pytest.mark.parametrize(("name", "when", "fact_fields", "expected"), MATCH_CASES, ids=[c[0] for c in MATCH_CASES])
def test_rule_matching(name: str, when: dict[str, Any], fact_fields: dict[str, Any], expected: bool) -> None:
    rule = rules({"id": "r", "when": when, "set": {"impact": 1}}).rules[0]
    assert rule.matches(facts(**fact_fields)) is expected


def test_first_match_wins_per_field() -> None:
    p = policy(
        {"id": "prod-payments", "when": {"service": ["payments"]}, "set": {"impact": 1}},
        {"id": "db", "when": {"keywords": ["postgres"]}, "set": {"category": "Database", "urgency": 2}},
        {"id": "db-late", "when": {"keywords": ["lag"]}, "set": {"urgency": 3}},
        {"id": "late", "when": {"keywords": ["replica"]}, "set": {"category": "Storage", "impact": 3}},
    )
    d = domain.evaluate(facts(title="postgres replica lag", service="payments"), p)
    assert d.categorization.category == "Database"
    assert d.categorization.rule_id == "db"
    assert d.categorization.matched_rules == ("prod-payments", "db", "db-late", "late")
    assert d.categorization.rule_set_version == 7
    assert (d.prioritization.impact, d.prioritization.urgency) == (1, 2)
    assert d.prioritization.impact_rule_id == "prod-payments"
    assert d.prioritization.urgency_rule_id == "db"
    assert d.prioritization.priority == "P2"


def test_no_match_uses_fallback_and_default_impact() -> None:
    d = domain.evaluate(
        facts(title="weird thing", service="blog"),
        policy({"id": "x", "when": {"keywords": ["zzz"]}, "set": {"category": "Network"}}),
    )
    assert d.categorization.category == "Other"
    assert d.categorization.rule_id is None
    assert d.categorization.affected_service == "blog"
    assert d.prioritization.impact_reasons == ("default impact 2",)
    assert d.prioritization.priority == "P3"  # impact 2 x urgency 2 (medium)


# Real alert titles (Alertmanager / kube-prometheus alert names, monitoring summaries, reports by
# people) -> (category, subcategory) under the default rules.
DEFAULT_CATEGORIZATION: list[tuple[str, str, str | None]] = [
    # Access: people's reports first, the ones that used to land in Other.
    ("Customers cannot log in", "Access", "Authentication"),
    ("SSO login failing", "Access", "Authentication"),
    ("Password reset emails not sent", "Access", "Authentication"),
    ("LDAP bind failures", "Access", "Authentication"),
    ("MFA not working", "Access", "Authentication"),
    ("OAuth callback failing", "Access", "Authentication"),
    ("HTTP 401 Unauthorized rate high on api", "Access", "Authentication"),
    ("Users get 403 on admin page", "Access", "Authorization"),
    ("Permission denied writing to /data", "Access", "Authorization"),
    ("CertificateExpiry", "Access", "Certificates"),
    ("SSLCertExpiringSoon", "Access", "Certificates"),
    ("TLS certificate expires in 3 days", "Access", "Certificates"),
    # Security.
    ("Ransomware detected", "Security", "Malware"),
    ("Brute force login attempts detected", "Security", "Intrusion"),
    ("Suspicious login from unknown country", "Security", "Intrusion"),
    ("Unauthorized access attempt", "Security", "Intrusion"),
    ("Data leak: S3 bucket public", "Security", "Data exposure"),
    ("CVE-2024-1234 in openssl", "Security", "Vulnerability"),
    # Hardware.
    ("Disk SMART failure on sda", "Hardware", "Failure"),
    ("SMARTDeviceFailure", "Hardware", "Failure"),
    ("RAID array degraded", "Hardware", "Failure"),
    ("ECC memory errors", "Hardware", "Failure"),
    ("UPS on battery", "Hardware", "Power"),
    ("UPSOnBattery", "Hardware", "Power"),
    ("PSU failure", "Hardware", "Power"),
    ("Fan failure on server r12", "Hardware", "Cooling"),
    ("CPU temperature critical", "Hardware", "Cooling"),
    # Storage.
    ("NodeFilesystemSpaceFillingUp", "Storage", "Capacity"),
    ("NodeFilesystemAlmostOutOfSpace", "Storage", "Capacity"),
    ("KubePersistentVolumeFillingUp", "Storage", "Capacity"),
    ("Disk full on /var", "Storage", "Capacity"),
    ("db-1 disk 95% full", "Storage", "Capacity"),
    ("No space left on device", "Storage", "Capacity"),
    ("Inode usage 95%", "Storage", "Capacity"),
    ("Disk latency high on db-1", "Storage", "Performance"),
    ("NFS mount stale", "Storage", "Availability"),
    ("Backup job failed", "Storage", "Backup"),
    # Databases.
    ("PostgresReplicationLag", "Database", "Replication"),
    ("Postgres replica lag 300s", "Database", "Replication"),
    ("PostgreSQLDown", "Database", "Availability"),
    ("RedisDown", "Database", "Availability"),
    ("PostgresTooManyConnections", "Database", "Capacity"),
    ("Slow queries on orders db", "Database", "Performance"),
    ("Deadlock detected", "Database", "Performance"),
    # Messaging.
    ("Kafka consumer lag high", "Messaging", "Consumer lag"),
    ("KafkaBrokerDown", "Messaging", "Broker"),
    ("RabbitMQ queue growing", "Messaging", "Backlog"),
    # Network.
    ("DNS resolution failures for api.example.com", "Network", "DNS"),
    ("CoreDNSDown", "Network", "DNS"),
    ("Packet loss on uplink eth0", "Network", "Connectivity"),
    ("HostHighPacketLoss", "Network", "Connectivity"),
    ("Interface eth0 down", "Network", "Connectivity"),
    ("BGP session down", "Network", "Connectivity"),
    ("HAProxy backend down", "Network", "Load balancer"),
    ("Firewall blocking port 443", "Network", "Firewall"),
    # Servers and the container platform.
    ("TargetDown", "Infrastructure/Server", "Host down"),
    ("InstanceDown", "Infrastructure/Server", "Host down"),
    ("KubeNodeNotReady", "Infrastructure/Server", "Host down"),
    ("OOMKilled", "Infrastructure/Server", "Memory"),
    ("KubeContainerOOMKilled", "Infrastructure/Server", "Memory"),
    ("HostHighCpuLoad", "Infrastructure/Server", "CPU"),
    ("High CPU on web-1", "Infrastructure/Server", "CPU"),
    ("NodeClockNotSynchronising", "Infrastructure/Server", "Clock"),
    ("KubeJobFailed", "Infrastructure/Server", "Process"),
    ("Pod stuck in ImagePullBackOff", "Infrastructure/Server", "Container platform"),
    ("KubeDeploymentReplicasMismatch", "Infrastructure/Server", "Container platform"),
    # Applications.
    ("KubePodCrashLooping", "Application", "Crash"),
    ("HighErrorRate", "Application", "Errors"),
    ("High 5xx rate on checkout", "Application", "Errors"),
    ("Checkout error rate above 5%", "Application", "Errors"),
    ("Service returning 502 Bad Gateway", "Application", "Errors"),
    ("APIHighLatency", "Application", "Latency"),
    ("Checkout page is slow", "Application", "Latency"),
    ("BlackboxProbeFailed", "Application", "Availability"),
    ("Website is down", "Application", "Availability"),
    # Whole words: none of these contain what a substring match used to see in them
    # ('sso' in processor, '401' in 14012, 'oom' in Zoom, 'breach' in an SLA breach).
    ("Processor temperature high", "Hardware", "Cooling"),
    ("Order 14012 failed to ship", "Other", None),
    ("Zoom meetings failing", "Other", None),
    ("SLA breach imminent", "Other", None),
    ("Something unheard of", "Other", None),
]


@pytest.mark.parametrize(
    ("title", "category", "subcategory"), DEFAULT_CATEGORIZATION, ids=[c[0] for c in DEFAULT_CATEGORIZATION]
)
def test_default_rules_categorize_real_alerts(title: str, category: str, subcategory: str | None) -> None:
    c = domain.evaluate(facts(title=title), Policy()).categorization
    assert (c.category, c.subcategory) == (category, subcategory)
    # The deciding rule and what it matched on are named, so "why Access?" has an answer.
    assert (c.rule_id is None) == (category == "Other")
    assert (c.matched_on is None) == (category == "Other")


def test_default_rules_read_descriptions_too() -> None:
    c = domain.evaluate(facts(title="Checkout alert", description="pg: too many connections"), Policy())
    assert (c.categorization.category, c.categorization.subcategory) == ("Database", "Capacity")


def test_default_tree_has_every_category_the_default_rules_use() -> None:
    used = {(r.spec.set.category, r.spec.set.subcategory) for r in domain.DEFAULT_RULES.rules if r.spec.set.category}
    assert all(TREE.check(cat, sub, "t") is None for cat, sub in used)
    assert {cat for cat, _ in used} == set(TREE.categories) - {"Other"}


KEYWORD_CASES: list[tuple[str, str, bool]] = [
    ("dns", "DNS lookups fail", True),
    ("dns", "CoreDNSDown", True),  # CamelCase split
    ("dns", "ddnsd restarted", False),  # not a whole word
    ("error rate", "HighErrorRate", True),
    ("error rate", "payments_error_rate above 5%", True),  # spaces match any separators
    ("error rate", "error-rates", False),
    ("crash*", "KubePodCrashLooping", True),  # '*' at the end: a word prefix
    ("*backoff", "ImagePullBackOff", True),  # '*' at the start: a word suffix
    ("cve-", "CVE-2024-1234", True),  # a non-alphanumeric edge is its own boundary
    ("401", "Order 14012", False),
    ("401", "HTTP 401", True),
    ("oom", "Zoom call", False),
    ("oom", "Container OOMKilled", True),
    ("postgres*", "PostgreSQLDown", True),
    ("Login", "customers cannot LOGIN", True),  # case ignored on both sides
    ("dns", "resolver_dns failing", True),  # an underscore separates words
    ("dns", "édns down", False),  # a letter outside ASCII is still a letter
    ("error rate", "xerror rate high", False),  # the start of a phrase is a word start too
    ("error rate", "error rate", True),  # at both ends of the text
]


@pytest.mark.parametrize(("keyword", "title", "expected"), KEYWORD_CASES, ids=[f"{k}|{t}" for k, t, _ in KEYWORD_CASES])
def test_keywords_match_whole_words(keyword: str, title: str, expected: bool) -> None:
    rule = rules({"id": "r", "when": {"keywords": [keyword]}, "set": {"impact": 1}}).rules[0]
    assert rule.matches(facts(title=title)) is expected


@pytest.mark.parametrize("keyword", ["*", " ", "--", "a*b"])
def test_unusable_keywords_are_refused(keyword: str) -> None:
    with pytest.raises(ConfigError) as info:
        domain.parse_rules([{"id": "r", "when": {"keywords": [keyword]}, "set": {"impact": 1}}])
    assert info.value.where == "rules[0] (id 'r').when.keywords"


def test_explanation_names_the_rule_and_what_matched() -> None:
    d = domain.evaluate(facts(title="Postgres replica lag 300s", environment="staging"), Policy())
    assert (d.categorization.rule_id, d.categorization.matched_on) == ("database-replication", "keyword 'replica lag'")
    assert d.prioritization.impact_reasons[0] == "rule non-production sets impact 3 (environment staging)"


# --------------------------------------------------------------------------- rule validation


@pytest.mark.parametrize(
    ("specs", "where", "words"),
    [
        ([], "rules", "empty"),
        ([{"id": "a", "set": {}}], "rules[0] (id 'a').set", "sets nothing"),
        (
            [{"id": "a", "when": {"title_regex": "(unclosed"}, "set": {"impact": 1}}],
            "rules[0] (id 'a').when.title_regex",
            "invalid regular expression",
        ),
        (
            [{"id": "a", "when": {"description_regex": "[z-a]"}, "set": {"impact": 1}}],
            "rules[0] (id 'a').when.description_regex",
            "invalid regular expression",
        ),
        ([{"id": "a", "set": {"category": "Nope"}}], "rules[0] (id 'a').set.category", "unknown category 'Nope'"),
        (
            [{"id": "a", "set": {"category": "Network", "subcategory": "Nope"}}],
            "rules[0] (id 'a').set.subcategory",
            "unknown subcategory",
        ),
        ([{"id": "a", "set": {"subcategory": "DNS"}}], "rules[0] (id 'a').set.subcategory", "needs its category"),
        ([{"id": "a", "set": {"impact": 4}}], "rules[0] (id 'a').set.impact", "less than or equal to 3"),
        (
            [{"id": "a", "when": {"colour": ["red"]}, "set": {"impact": 1}}],
            "rules[0] (id 'a').when.colour",
            "Extra inputs",
        ),
        (
            [{"id": "a", "when": {"severity": ["huge"]}, "set": {"impact": 1}}],
            "rules[0] (id 'a').when.severity.0",
            "Input should be",
        ),
        ([{"id": "bad id!", "set": {"impact": 1}}], "rules[0] (id 'bad id!').id", "pattern"),
        ([{"set": {"impact": 1}}], "rules[0].id", "required"),
        (
            [{"id": "a", "set": {"impact": 1}}, {"id": "a", "when": {"service": ["x"]}, "set": {"urgency": 1}}],
            "rules[1] (id 'a').id",
            "duplicate rule id",
        ),
        (
            [
                {"id": "all", "set": {"category": "Network"}},
                {"id": "db", "when": {"keywords": ["db"]}, "set": {"category": "Database"}},
            ],
            "rules[1] (id 'db').when",
            "overlaps earlier rule(s) all",
        ),
        (
            [
                {"id": "dbs", "when": {"keywords": ["db", "sql"]}, "set": {"category": "Database", "impact": 2}},
                {"id": "db", "when": {"keywords": ["db"], "service": ["x"]}, "set": {"impact": 1}},
            ],
            "rules[1] (id 'db').when",
            "overlaps earlier rule(s) dbs",
        ),
        (
            [
                {"id": "same", "when": {"title_regex": "a+"}, "set": {"urgency": 1}},
                {"id": "again", "when": {"title_regex": "a+"}, "set": {"urgency": 2}},
            ],
            "rules[1] (id 'again').when",
            "could never apply",
        ),
    ],
)
def test_rule_set_faults_name_rule_and_field(specs: list[dict[str, Any]], where: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        rules(*specs)
    assert info.value.where == where
    assert words in info.value.message


def test_partial_overlap_is_allowed() -> None:
    # The later rule is shadowed for category but still sets urgency: it can apply, so it is kept.
    rs = rules(
        {"id": "all", "set": {"category": "Network"}},
        {"id": "db", "when": {"keywords": ["db"]}, "set": {"category": "Database", "urgency": 1}},
    )
    assert [r.id for r in rs.rules] == ["all", "db"]
    # A more general rule after a specific one is fine too.
    rules(
        {"id": "db", "when": {"keywords": ["db"]}, "set": {"category": "Database"}},
        {"id": "all", "set": {"category": "Network"}},
    )


def test_default_rules_are_valid_and_round_trip() -> None:
    again = domain.build_rules(1, domain.parse_rules(domain.DEFAULT_RULES.as_json()), TREE)
    assert again.as_json() == domain.DEFAULT_RULES.as_json()


# --------------------------------------------------------------------------- categories


@pytest.mark.parametrize(
    ("categories", "fallback", "where"),
    [
        ({}, None, "categories"),
        ({"Network": [], "network": []}, None, "categories['network']"),
        ({" Net": [], "Other": []}, None, "categories[' Net']"),
        ({"Net": ["DNS", "dns"], "Other": []}, None, "categories['Net']['dns']"),
        ({"Net": []}, None, "fallback"),
        ({"Net": [], "Other": []}, "Misc", "fallback"),
    ],
)
def test_category_tree_faults(categories: dict[str, list[str]], fallback: str | None, where: str) -> None:
    with pytest.raises(ConfigError) as info:
        domain.build_tree(2, categories, fallback)
    assert info.value.where == where


def test_tree_change_must_keep_categories_rules_use() -> None:
    tree = domain.build_tree(2, {"Network": ["DNS"], "Other": []})
    with pytest.raises(ConfigError) as info:
        domain.rules_using(domain.DEFAULT_RULES, tree)
    assert info.value.where == "rules[1] (id 'security-malware').set.category"


def test_custom_fallback() -> None:
    tree = domain.build_tree(2, {"Network": [], "Unsorted": []}, "Unsorted")
    rs = domain.build_rules(
        3, domain.parse_rules([{"id": "n", "when": {"keywords": ["net"]}, "set": {"category": "Network"}}]), tree
    )
    d = domain.evaluate(facts(title="??"), Policy(tree=tree, rules=rs))
    assert d.categorization.category == "Unsorted"


# --------------------------------------------------------------------------- impact and urgency

IMPACT_CASES: list[tuple[str, dict[str, Any], dict[str, Any], int, str]] = [
    ("default", {}, {}, 2, "default impact 2"),
    ("criticality map", {"service": "payments"}, {}, 1, "service payments has criticality 1"),
    ("criticality case-insensitive", {"service": "PAYMENTS"}, {}, 1, "criticality 1"),
    (
        "rule beats criticality",
        {"service": "payments", "environment": "staging"},
        {},
        3,
        "rule non-production sets impact 3",
    ),
    (
        "reporter beats rule",
        {"environment": "staging", "business_impact": ImpactLevel.HIGH},
        {},
        1,
        "reporter stated high",
    ),
    ("reporter low", {"service": "payments", "business_impact": ImpactLevel.LOW}, {}, 3, "reporter stated low"),
    ("count raises one level", {"occurrence_count": 10}, {}, 1, "10 correlated alerts (>= 10) raise impact to 1"),
    ("count below threshold", {"occurrence_count": 9}, {}, 2, "default impact 2"),
    ("two thresholds raise two", {"occurrence_count": 50, "environment": "dev"}, {}, 1, "raise impact to 1"),
]


@pytest.mark.parametrize(
    ("name", "fact_fields", "kw", "impact", "reason"), IMPACT_CASES, ids=[c[0] for c in IMPACT_CASES]
)
def test_impact(name: str, fact_fields: dict[str, Any], kw: dict[str, Any], impact: int, reason: str) -> None:
    p = Policy(criticality={"payments": 1, "blog": 3}, **kw)
    prio = domain.evaluate(facts(**fact_fields), p).prioritization
    assert prio.impact == impact
    assert any(reason in r for r in prio.impact_reasons), prio.impact_reasons


URGENCY_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("critical", {"severity": Severity.CRITICAL}, 1, "severity critical -> urgency 1"),
    ("high", {"severity": Severity.HIGH}, 2, "severity high -> urgency 2"),
    ("medium", {"severity": Severity.MEDIUM}, 2, "severity medium"),
    ("low", {"severity": Severity.LOW}, 3, "severity low"),
    ("info", {"severity": Severity.INFO}, 3, "severity info"),
    (
        "rule",
        {"title": "malware found", "severity": Severity.LOW},
        1,
        "rule security-malware sets urgency 1 (keyword 'malware')",
    ),
    ("hint beats rule", {"title": "malware found", "urgency_hint": 3}, 3, "urgency hint 3"),
    (
        "correlation escalates",
        {"severity": Severity.CRITICAL, "initial_severity": Severity.LOW},
        1,
        "correlated alert raised severity to critical",
    ),
    (
        "escalation beats hint",
        {"severity": Severity.CRITICAL, "initial_severity": Severity.LOW, "urgency_hint": 3},
        1,
        "raised severity",
    ),
]


@pytest.mark.parametrize(("name", "fact_fields", "urgency", "reason"), URGENCY_CASES, ids=[c[0] for c in URGENCY_CASES])
def test_urgency(name: str, fact_fields: dict[str, Any], urgency: int, reason: str) -> None:
    prio = domain.evaluate(facts(**fact_fields), Policy()).prioritization
    assert prio.urgency == urgency
    assert any(reason in r for r in prio.urgency_reasons), prio.urgency_reasons


severities = st.sampled_from(list(Severity))
impacts = st.none() | st.sampled_from(list(ImpactLevel))
hints = st.none() | st.integers(1, 3)


@st.composite
def any_facts(draw: st.DrawFn) -> Facts:
    initial = draw(severities)
    return Facts(
        source=draw(st.sampled_from(["alertmanager", "grafana", "manual"])),
        title=draw(st.sampled_from(["postgres down", "dns fail", "cpu high", "malware", "?"])),
        severity=domain.higher_severity(initial, draw(severities)),
        initial_severity=initial,
        service=draw(st.none() | st.sampled_from(["payments", "blog", "x"])),
        environment=draw(st.none() | st.sampled_from(["prod", "staging"])),
        occurrence_count=draw(st.integers(1, 100)),
        business_impact=draw(impacts),
        urgency_hint=draw(hints),
    )


@given(any_facts())
def test_evaluation_is_total_and_explained(f: Facts) -> None:
    d = domain.evaluate(f, Policy(criticality={"payments": 1, "blog": 3}))
    p = d.prioritization
    assert p.impact in (1, 2, 3) and p.urgency in (1, 2, 3)
    assert p.priority == domain.DEFAULT_MATRIX.priority(p.impact, p.urgency)
    assert p.impact_reasons and p.urgency_reasons
    assert d.categorization.category in TREE.categories


@given(any_facts(), severities, st.integers(1, 200))
def test_more_correlation_never_lowers_priority(f: Facts, severity: Severity, count: int) -> None:
    p = Policy()
    before = domain.evaluate(f, p).prioritization
    after = domain.evaluate(domain.with_correlation(f, severity, count), p).prioritization
    assert after.impact <= before.impact
    assert after.urgency <= before.urgency
    assert int(after.priority[1:]) <= int(before.priority[1:])


# --------------------------------------------------------------------------- overrides and triggers


def test_override_wins_until_cleared() -> None:
    d = domain.evaluate(facts(title="dns down", severity=Severity.CRITICAL), Policy())
    assert (d.categorization.category, d.prioritization.priority) == ("Network", "P2")
    o = domain.Overrides(
        category=domain.CategoryOverride("Database", "Replication", "it was the db", "admin"),
        priority=domain.PriorityOverride("P1", "customers down", "admin"),
    )
    e = domain.effective(d, o)
    assert (e.category, e.subcategory, e.priority) == ("Database", "Replication", "P1")
    assert e.category_overridden and e.priority_overridden
    e2 = domain.effective(d, replace(o, priority=None))
    assert (e2.priority, e2.priority_overridden, e2.category) == ("P2", False, "Database")


@pytest.mark.parametrize(
    ("before", "severity", "count", "reason"),
    [
        ({}, Severity.CRITICAL, 2, "raised severity from medium to critical"),
        ({}, Severity.LOW, 2, None),
        ({}, Severity.MEDIUM, 9, None),
        ({}, Severity.MEDIUM, 10, "reached 10 occurrences (threshold 10)"),
        ({"occurrence_count": 10}, Severity.MEDIUM, 20, None),
        ({"occurrence_count": 10}, Severity.MEDIUM, 60, "threshold 50"),
    ],
)
def test_correlation_trigger(before: dict[str, Any], severity: Severity, count: int, reason: str | None) -> None:
    f = facts(**before)
    got = domain.correlation_trigger(f, domain.with_correlation(f, severity, count), Policy())
    if reason is None:
        assert got is None
    else:
        assert got is not None and reason in got


@pytest.mark.parametrize("value", ["P1", "p3", "P5"])
def test_check_priority_accepts(value: str) -> None:
    assert domain.check_priority(value) == value.upper()


@pytest.mark.parametrize("value", ["P0", "P6", "high", ""])
def test_check_priority_rejects(value: str) -> None:
    with pytest.raises(ConfigError, match="priority"):
        domain.check_priority(value)


def test_facts_round_trip() -> None:
    f = facts(labels={"a": "b"}, business_impact=ImpactLevel.LOW, urgency_hint=2, occurrence_count=4)
    assert Facts.from_json(f.as_json()) == f


# --------------------------------------------------------------------------- overlap detection is sound

words = st.sampled_from(["a", "b", "c"])
opt_list = st.none() | st.lists(words, min_size=1, max_size=3)


@st.composite
def conditions(draw: st.DrawFn) -> dict[str, Any]:
    when: dict[str, Any] = {
        "source": draw(opt_list),
        "service": draw(opt_list),
        "environment": draw(opt_list),
        "severity": draw(st.none() | st.lists(severities, min_size=1, max_size=3)),
        "labels": draw(st.dictionaries(words, st.sampled_from(["a", "b", "*"]), max_size=2)),
        "keywords": draw(st.none() | st.lists(st.sampled_from(["disk", "db", "net"]), min_size=1, max_size=2)),
        "title_regex": draw(st.none() | st.sampled_from(["^disk", "db$"])),
    }
    return {k: v for k, v in when.items() if v is not None}


@st.composite
def small_facts(draw: st.DrawFn) -> Facts:
    sev = draw(severities)
    return Facts(
        source=draw(words),
        title=draw(st.sampled_from(["disk db", "net", "db", "disk", "x"])),
        severity=sev,
        initial_severity=sev,
        service=draw(st.none() | words),
        environment=draw(st.none() | words),
        labels=draw(st.dictionaries(words, words, max_size=2)),
    )


@given(conditions(), conditions(), small_facts())
def test_overlap_detection_never_rejects_a_reachable_rule(g: dict[str, Any], s: dict[str, Any], f: Facts) -> None:
    """When a later rule is rejected as overlapped, every incident it matches is matched by the
    earlier rule too, so rejecting it never loses a reachable decision."""
    specs = [{"id": "general", "when": g, "set": {"impact": 1}}, {"id": "specific", "when": s, "set": {"impact": 2}}]
    try:
        rs = rules(*specs)
    except ConfigError as exc:
        assert "overlaps earlier rule(s) general" in exc.message
        general = domain.Rule(domain.RuleSpec.model_validate(specs[0]), *_compiled(g))
        specific = domain.Rule(domain.RuleSpec.model_validate(specs[1]), *_compiled(s))
        if specific.matches(f):
            assert general.matches(f)
    else:
        assert len(rs.rules) == 2


def _compiled(when: dict[str, Any]) -> tuple[Any, Any]:
    return (re.compile(when["title_regex"], re.IGNORECASE) if "title_regex" in when else None, None)


def test_affected_service_from_rule_drives_criticality() -> None:
    p = Policy(
        rules=rules({"id": "pay", "when": {"labels": {"app": "checkout"}}, "set": {"affected_service": "payments"}}),
        criticality={"payments": 1},
    )
    d = domain.evaluate(facts(labels={"app": "checkout"}, service="web-frontend"), p)
    assert d.categorization.affected_service == "payments"
    assert (d.prioritization.impact, d.prioritization.service_criticality) == (1, 1)
    assert d.prioritization.impact_reasons == ("service payments has criticality 1",)


# --------------------------------------------------------------------------- regular expressions (RE2)

# Patterns that backtrack catastrophically in Python's `re`: on the texts below each would run for
# hours there (exponential or high-polynomial in the text length). Under RE2 they are ordinary.
# The last item: whether the pattern matches the text (`...*$` also matches the empty end).
CATASTROPHIC = [
    (r"(a+)+$", "a" * 5000 + "!", False),
    (r"(\w+\s?)*$", "word " * 2000 + "!", True),
    (r"(a|a)*$", "a" * 5000 + "!", True),
    (r"(?:a|b|ab)+c", "ab" * 3000, False),
    (r"(a{1,10}){1,10}$", "a" * 5000 + "!", False),
    (r".*.*.*x", "y" * 20000, False),
    (r"\w+\w+x", "w" * 20000, False),
    (r".*error.*timeout", "error " * 5000, False),
    (r"(.*,){10}x", "," * 3000, False),
]


@pytest.mark.parametrize(("pattern", "hostile", "matches"), CATASTROPHIC)
def test_patterns_that_backtrack_in_python_are_evaluated_in_linear_time(
    pattern: str, hostile: str, matches: bool
) -> None:
    p = policy(
        {"id": "t", "when": {"title_regex": pattern}, "set": {"impact": 1}},
        {"id": "d", "when": {"description_regex": pattern}, "set": {"urgency": 1}},
    )
    # A backtracking engine would not return from this call at all.
    decision = domain.evaluate(facts(title=hostile[-1024:], description=hostile), p).prioritization
    expected = ("t", "d") if matches else (None, None)
    assert (decision.impact_rule_id, decision.urgency_rule_id) == expected


def test_a_regex_matches_what_it_should() -> None:
    p = policy({"id": "m", "when": {"description_regex": r".*error.*timeout"}, "set": {"urgency": 1}})
    assert domain.evaluate(facts(description="an ERROR, then a timeout"), p).prioritization.urgency_rule_id == "m"
    assert domain.evaluate(facts(description="a timeout, then an error"), p).prioritization.urgency_rule_id is None


@pytest.mark.parametrize(
    ("pattern", "construct"),
    [(r"(a+)\1", "backreference"), (r"db(?=-prod)", "lookahead"), (r"(?<!test-)db", "lookbehind"), ("(slow", "syntax")],
)
def test_what_re2_cannot_run_is_refused_naming_the_field_and_the_syntax(pattern: str, construct: str) -> None:
    for name in ("title_regex", "description_regex"):
        with pytest.raises(ConfigError) as info:
            rules({"id": "py", "when": {name: pattern}, "set": {"impact": 1}})
        assert info.value.where == f"rules[0] (id 'py').when.{name}", construct
        assert "invalid regular expression" in info.value.message and "RE2 syntax" in info.value.message


@pytest.mark.parametrize(
    ("pattern", "title", "matches"),
    [
        (r"replica lag \d+s", "Replica LAG 30s on db-2", True),  # case-insensitive
        (r"standby .* behind", "standby db-3 is 40s behind", True),
        (r"(\d{1,3}\.){3}\d{1,3}", "unreachable: 10.0.12.7", True),
        (r"^(\w+)-(\w+)$", "payments-db", True),
        (r"^(\w+)-(\w+)$", "payments db", False),
        (r"(?:foo|bar)+x", "barfoox", True),
    ],
)
def test_ordinary_regexes_match_as_written(pattern: str, title: str, matches: bool) -> None:
    p = policy({"id": "r", "when": {"title_regex": pattern}, "set": {"impact": 1}})
    assert (domain.evaluate(facts(title=title), p).prioritization.impact_rule_id == "r") is matches


def test_stored_rule_sets_written_for_pythons_re_still_load() -> None:
    # A version stored before rules ran on RE2 must still load (or triage would stop), but a new
    # version with the same regex is refused.
    specs = domain.parse_rules([{"id": "old", "when": {"title_regex": r"db(?=-prod)"}, "set": {"impact": 1}}])
    stored = domain.build_rules(3, specs, TREE, stored=True)
    assert stored.rules[0].title_re is not None and stored.rules[0].title_re.search("DB-prod down")
    assert not stored.rules[0].title_re.search("db-staging down")
    with pytest.raises(ConfigError):
        domain.build_rules(4, specs, TREE)


# --------------------------------------------------------------------------- types and sizes


@pytest.mark.parametrize(
    ("actions", "field"),
    [
        ({"impact": True}, "set.impact"),
        ({"impact": "1"}, "set.impact"),
        ({"urgency": 1.0}, "set.urgency"),
        ({"urgency": None, "impact": 4}, "set.impact"),
        ({"category": ""}, "set.category"),
        ({"impact": 1, "colour": "red"}, "set.colour"),
    ],
)
def test_wrong_types_are_refused_not_coerced(actions: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        domain.parse_rules([{"id": "r", "set": actions}])
    assert info.value.where == f"rules[0] (id 'r').{field}"


def test_rule_and_tree_sizes_are_bounded() -> None:
    many = [{"id": f"r{i}", "when": {"service": [f"s{i}"]}, "set": {"impact": 1}} for i in range(domain.MAX_RULES + 1)]
    with pytest.raises(ConfigError) as info:
        domain.build_rules(2, domain.parse_rules(many), TREE)
    assert info.value.where == "rules" and str(domain.MAX_RULES) in info.value.message
    with pytest.raises(ConfigError) as info:
        domain.build_tree(2, {f"C{i}": [] for i in range(domain.MAX_CATEGORIES + 1)} | {"Other": []})
    assert info.value.where == "categories"
