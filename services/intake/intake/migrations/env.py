from intake.store import metadata
from opsledger.migrations import run_env

run_env(metadata)
