"""Backdoor detection without the user's data: Universal Litmus Patterns (ULP) and the model zoos they learn from.

A litmus bank (:mod:`worker.core.bankfiles`) holds M input patterns and a linear classifier, learned on a zoo of
clean and backdoored models that bdscreen trains itself (:mod:`worker.zoo.zoo`). Detecting one uploaded
model is one batched forward pass of the patterns (:mod:`worker.engine.detect.ulp`).
"""
