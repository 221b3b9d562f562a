from assignment.app import MIGRATIONS
from assignment.settings import Settings
from opsledger.cli import main

main("assignment", Settings(), MIGRATIONS)
