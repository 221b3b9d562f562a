"""The compiled policy, cached per configuration version: compiling a rule set (regexes, keyword
patterns, the shadowing check) is far dearer than deciding an incident, so it is done once per
version in force, not once per event.

A stored version never changes (rows of config_versions are only inserted), so the versions in
force identify the policy exactly; one cheap query per unit of work reads them, and the policy is
rebuilt only when one of them moved. Only committed versions are ever cached: the versions are
read before anything is written, and a configuration change builds on the versions it replaces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from triage import domain, store

Versions = tuple[tuple[str, int], ...]  # (kind, version) of each kind in force, sorted


class PolicyCache:
    """One process's compiled policy of the versions in force, with the settings' service
    criticality and count thresholds (fixed for the process)."""

    def __init__(self, criticality: Mapping[str, int], thresholds: tuple[int, ...]) -> None:
        self.criticality = dict(criticality)
        self.thresholds = tuple(thresholds)
        self._cached: tuple[Versions, domain.Policy] | None = None
        self.builds = 0  # how many times a policy was compiled (tests and diagnostics)

    async def current(self, session: AsyncSession, versions: Mapping[str, int] | None = None) -> domain.Policy:
        """The policy in force: one query for the versions (none when the caller read them in this
        transaction, before writing any), a second only when they changed."""
        if versions is None:
            versions = await store.versions_in_force(session)
        cached = self._cached
        if cached is not None and cached[0] == _key(versions):
            return cached[1]
        return self.of(await store.configs_at(session, dict(versions)))

    def of(self, rows: Mapping[str, sa.Row[Any]]) -> domain.Policy:
        """The policy of these stored versions (kind -> row), from the cache when it holds them."""
        key = _key({kind: row.version for kind, row in rows.items()})
        cached = self._cached
        if cached is not None and cached[0] == key:
            return cached[1]
        policy = store.policy_from(dict(rows), self.criticality, self.thresholds)
        self.builds += 1
        self._cached = (key, policy)
        return policy


def _key(versions: Mapping[str, int]) -> Versions:
    return tuple(sorted(versions.items()))
