"""imageforge tasks. `invoke --list` shows them; the logic lives in the imageforge package."""

from imageforge.tasks import namespace

ns = namespace
