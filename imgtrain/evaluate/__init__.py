"""Evaluation: metrics from the confusion matrix, the report, and its plots."""
