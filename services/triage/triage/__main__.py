from opsledger.cli import main
from triage.app import MIGRATIONS
from triage.settings import Settings

main("triage", Settings(), MIGRATIONS)
