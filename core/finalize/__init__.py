"""Finalize: land the masks exactly on the size budgets, then prune the student physically.

landing.py   land(student, budgets)   moves the weakest or strongest units until every target is met
stage.py     finalize(job, clusters)  the stage: landing, physical pruning, masked-vs-pruned check
"""
