"""Datasets: Karpathy split JSON + images, SCAN/VSE precomputed features, and a synthetic generator.

Every reader returns a `CaptionSplit`; nothing here imports torch except `core.data.loading`.
"""
