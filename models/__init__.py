"""Segmentation networks, inference backends, training on simulated data, shipped weights.

Imports nothing of the project.
"""
