"""What runs on a device: local training, the memory meter, the cost model, width
sub-models, LoRA."""
