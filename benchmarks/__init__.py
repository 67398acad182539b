"""Benchmarks of ``budgeted`` side by side with joblib's own backends.

Run them with ``python -m benchmarks [--quick]``; shared helpers live in
:mod:`benchmarks.common`.
"""
