"""Networks: classifiers and purifiers."""
