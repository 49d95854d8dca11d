"""Offline bank building: model zoos of clean and backdoored models that bdscreen trains itself, the attacks that
poison them, and Universal Litmus Patterns training (:mod:`worker.zoo.ulp_training`).

A litmus bank (:mod:`worker.core.bankfiles`) holds M input patterns and a linear classifier learned on a zoo
(:mod:`worker.zoo.zoo`). Scanning a model with a bank (:mod:`worker.engine.detect.ulp`) imports nothing from here.
"""
