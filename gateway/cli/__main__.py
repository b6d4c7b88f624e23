"""`python -m gateway.cli`: the same as `cardinal`."""

from gateway.cli.main import main

raise SystemExit(main())
