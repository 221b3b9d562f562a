"""OpsLedger resolution service: resolution, closure, reopening, reviews."""
