"""Training the built-in ``mini`` model on the procedural music set (used by ``scripts/train_mini.py``)."""
