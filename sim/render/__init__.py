"""Software camera renderer of the embedded simulator: RGB, semantic tags and depth."""
