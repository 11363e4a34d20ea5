"""The learners (pure functions of a flat θ) and the meta-learner; :mod:`attnopt.models.build`
makes them from a config."""
