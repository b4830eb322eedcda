"""The CARLA backend: a client of a running CARLA server (0.9.15/0.9.16), behind the Simulator interface."""
