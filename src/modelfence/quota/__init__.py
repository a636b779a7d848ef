"""Usage counts, rate limits and extraction budgets."""
