"""The run layer: build a run from a config, the training loop, metering, evaluation, stops."""
