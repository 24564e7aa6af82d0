"""`python -m bench [NAME ...] [options]`; see bench/README.md."""

from bench.cli import main

raise SystemExit(main())
