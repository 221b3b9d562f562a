"""OpsLedger triage service: categorization and prioritization."""
