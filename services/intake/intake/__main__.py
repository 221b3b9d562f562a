from intake.app import MIGRATIONS
from intake.settings import Settings
from opsledger.cli import main

main("intake", Settings(), MIGRATIONS)
