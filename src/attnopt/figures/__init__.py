"""Figures of a run (``attnopt plot``, ``attnopt report``) and the numbers behind them."""
