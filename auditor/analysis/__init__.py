"""Analyses over the whole dataset (drift, shift, pretraining gap, projection): plain results, no findings."""
