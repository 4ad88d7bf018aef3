"""The discount-code service: bulk generation, exactly-once claims and a live claim feed."""

__version__ = "0.1.0"
