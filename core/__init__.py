"""Shared base of itr-distill: datasets, towers, config, file I/O. Imports nothing of ours.

Importing `core` (or `core.data.images`) must not import torch: the torch-free runtime uses it.
"""
