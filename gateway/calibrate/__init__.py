"""`cardinal calibrate`: measure one real card and feed the measurement back to the planner."""
