"""Tabular example: four hospitals train an MLP on scikit-learn's breast-cancer data."""
