from opsledger.migrations import run_env
from sla.store import metadata

run_env(metadata)
