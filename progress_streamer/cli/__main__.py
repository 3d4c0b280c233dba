"""`python -m progress_streamer.cli`: the same as the `progress-streamer` command."""

import sys

from progress_streamer.cli import main

sys.exit(main())
