"""PID and MPC trackers, vehicle models and actuator mapping."""
