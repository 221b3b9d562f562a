"""`python -m reporting` serves; `migrate` migrates; `rebuild` asks the running service to rebuild
its projections (POST /v1/admin/rebuild) and waits until it has switched over."""

import sys

from opsledger.cli import main
from reporting.app import MIGRATIONS
from reporting.settings import Settings

if sys.argv[1:2] == ["rebuild"]:
    from reporting.rebuild_cli import rebuild

    sys.exit(rebuild(Settings(), sys.argv[2:]))
main("reporting", Settings(), MIGRATIONS)
