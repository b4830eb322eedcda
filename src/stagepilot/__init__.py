"""stagepilot: a camera-based driving stack for CARLA and its embedded simulator.

The installed namespace maps the repository's top-level folders: ``stagepilot.sim``,
``stagepilot.perception``, ``stagepilot.planning``, ``stagepilot.control`` and
``stagepilot.pipeline`` (see DESIGN.md, Layout).
"""

__version__ = "0.1.0"
