"""Benchmarks of Disco Farm (`make bench`): engine efficiency, farm overhead, scheduler
makespan on CPU (`python -m bench.run`), GPU throughput (`python -m bench.gpu`).

Figures are printed and saved in bench/results/<date>-<machine>.json; nothing here is
a timed test (tests/test_bench.py only checks that the code runs and writes results).
"""
