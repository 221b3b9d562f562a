"""OpsLedger common library shared by every service."""
