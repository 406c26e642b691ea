"""The runtime image every component runs in on a cluster.

Set ``SALMON_RUNTIME_IMAGE`` when compiling to point at your registry; the default is the tag
built from ``images/runtime`` for this version.
"""

import os

RUNTIME_IMAGE = os.environ.get("SALMON_RUNTIME_IMAGE", "ghcr.io/salmon-mlops/salmon-runtime:0.1.0")
