"""OpsLedger reporting service: read models, audit trail and analytics."""
