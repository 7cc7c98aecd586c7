"""Studies: the paper's protocol (grid search -> seeds -> test) as resumable, shareable records."""
