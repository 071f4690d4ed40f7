"""`python -m anime_pipeline <command>`: see `anime_pipeline.cli`."""

from anime_pipeline.cli import main

raise SystemExit(main())
