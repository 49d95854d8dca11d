"""Repair by activation pruning (Fine-Pruning), fine-tuning and the GoodNet wrapper.

Each module is a plain function interface on the canonical model; :mod:`worker.engine.scan` orchestrates.
"""
