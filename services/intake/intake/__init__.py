"""OpsLedger intake service: logging of alerts and reported incidents."""
