"""Supply-chain and pipeline defences: static model-file scanning, dataset manifests, signing and a
tamper-evident audit log.

This package is the lowest layer of modelshield (it imports nothing else of the package but
``errors`` and the shared private helpers), because the loaders in ``modelshield.data`` and
``modelshield.models`` scan every file before they read it.
"""

from __future__ import annotations
