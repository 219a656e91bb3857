"""Speed, memory and quality tables (one script each; run as `python benchmarks/NAME.py` after README's set-up)."""
