"""The resolution stage: its decider run over consumed batches, fired timers and commands (see
opsledger.stage), reading and writing this service's own tables."""

from opsledger.stage import Stage
from resolution import domain, store

stage: Stage[domain.Incident, None] = Stage(
    "resolution", domain.decider, load=store.load, save=store.save, context=store.no_context
)
