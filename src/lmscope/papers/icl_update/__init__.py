"""Dherin et al. 2025, "Learning without training": in-context learning as an implicit rank-1 update of the MLP's
first weight matrix.

    icl_update(model, prompt)        the update dW of a few-shot prompt on a real model, its identities at every
                                     layer (with the residual term) and how it grows example by example (dynamics.py)
    icl_regression(config)           the paper's own toy: a one-block transformer trained on in-context linear
                                     regression, implicit update vs explicit gradient descent (regression.py)
"""
from lmscope.papers.icl_update.dynamics import IclUpdateResult, icl_update
from lmscope.papers.icl_update.regression import RegressionConfig, RegressionResult, icl_regression

__all__ = ["IclUpdateResult", "RegressionConfig", "RegressionResult", "icl_regression", "icl_update"]
