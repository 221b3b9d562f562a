"""The assignment stage: its decider run over consumed batches, fired timers and commands (see
opsledger.stage), reading and writing this service's own tables."""

from assignment import domain, store
from opsledger.stage import Stage

stage: Stage[domain.Incident, None] = Stage(
    "assignment", domain.decider, load=store.load, save=store.save, context=store.no_context
)
