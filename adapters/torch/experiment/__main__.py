"""``python -m adapters.torch.experiment train|sweep ...``: the same as ``lti-reduce train|sweep``."""

import sys

from .cli import main

sys.exit(main())
