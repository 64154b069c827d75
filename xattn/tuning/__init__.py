"""Study specs, search spaces, the Ray Tune trainable and the study runner."""
