"""``python -m opendlign_core``: the core command line without ROS."""

from opendlign_core.cli import main

raise SystemExit(main())
