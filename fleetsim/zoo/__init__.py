"""The models and the data: the model zoo, its pretraining, the Shakespeare data, the cache."""
