from opsledger.migrations import run_env

run_env()
