"""World sources: the embedded simulator, the CARLA client and recorded-drive replay."""
