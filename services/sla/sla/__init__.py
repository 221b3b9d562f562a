"""OpsLedger sla service: sla clocks, warnings and breaches."""
