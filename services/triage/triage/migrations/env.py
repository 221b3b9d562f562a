from opsledger.migrations import run_env
from triage.store import metadata

run_env(metadata)
