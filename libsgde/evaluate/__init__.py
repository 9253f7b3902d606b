"""Evaluation of a generator: utility (train on synthetic, test on real), fidelity, and privacy audits."""
