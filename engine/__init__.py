"""The shared training engine: data, models, optimizers, the loop, probes, execution, files.

Nothing in here knows about any particular experiment.
"""
