"""The run itself: assembly, the engine, hosts and pools, faults, aggregation,
checkpoints, batches."""
