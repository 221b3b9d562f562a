from opsledger.cli import main
from resolution.app import MIGRATIONS
from resolution.settings import Settings

main("resolution", Settings(), MIGRATIONS)
