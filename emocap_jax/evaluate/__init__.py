"""Evaluation: metrics, protocols and reports."""
