from opsledger.migrations import run_env
from resolution.store import metadata

run_env(metadata)
