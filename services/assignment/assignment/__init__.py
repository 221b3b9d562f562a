"""OpsLedger assignment service: teams, assignment, escalation, acknowledgement."""
