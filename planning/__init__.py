"""Route, behaviour layer, local trajectory planner and collision checks."""
