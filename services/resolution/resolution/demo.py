"""What `make up` seeds here (setting `demo`, with an SMTP server configured): one email subscription
that pages the demo team's assignee on IncidentAssigned and IncidentEscalated, so a newcomer's
first alert produces a page they can open (`make up`'s mail catcher saves it under .local/mail)."""

from __future__ import annotations

import logging
import secrets

from opsledger.devtokens import DEMO_TEAM, DEMO_USERS
from opsledger.events.resolution import ChannelKind
from resolution import domain, store
from resolution.runtime import ResolutionRuntime
from resolution.subscriptions import FilterBody, SubscriptionBody, _definition, _save

log = logging.getLogger(__name__)

SUBSCRIPTION_ID = "sub-demo-page"
TEAM_ID = "demo"  # the team the assignment stage seeds (assignment/demo.py)


def subscription() -> SubscriptionBody:
    manager = next(u for u in DEMO_USERS if u.sub == DEMO_TEAM[0])
    return SubscriptionBody(
        name="Page the demo team's assignee",
        channel=ChannelKind.EMAIL,
        target=manager.email,  # when the assignee has no address
        filters=FilterBody(event_types=["IncidentAssigned", "IncidentEscalated"], teams=[TEAM_ID], assignee_only=True),
        comment="seeded by make up (OPSLEDGER_DEMO=1)",
    )


async def seed(runtime: ResolutionRuntime) -> None:
    """Create the demo subscription unless it exists (idempotent: a changed one is kept as it is;
    a deleted one comes back at the next start)."""
    if runtime.settings.smtp_host is None:
        log.info("demo: no SMTP server configured (OPSLEDGER_SMTP_HOST), no paging subscription seeded")
        return
    async with runtime.unit_of_work() as uow:
        await store.lock_subscriptions(uow.session)
        if await store.subscription_rows(uow.session, [SUBSCRIPTION_ID]):
            return
        definition = _definition(SUBSCRIPTION_ID, 1, subscription(), runtime.settings)
        await _save(uow, definition, secrets.token_urlsafe(32), None, domain.SYSTEM_ACTOR)
    log.info("demo: seeded subscription %s (email to the demo team's assignee)", SUBSCRIPTION_ID)
