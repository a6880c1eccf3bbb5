"""The fitted posterior: draws from the guide replayed through the model, and the statistics of those draws."""
