"""The simulated world: the SimPy clock, the fleet and its changing constraints, availability."""
