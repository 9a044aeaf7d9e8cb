"""peftc.lifelong: Adapt-inf, lifelong adaptation over a stream of tasks with dynamic data selection and pruning."""
