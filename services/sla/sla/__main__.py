from opsledger.cli import main
from sla.app import MIGRATIONS
from sla.settings import Settings

main("sla", Settings(), MIGRATIONS)
