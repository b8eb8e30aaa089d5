"""`python -m cmbench`: the same CLI as the `cmbench` command."""

from .cli import main

raise SystemExit(main())
