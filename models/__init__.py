"""Networks: the score model, the time-dependent classifiers and the compositions."""
