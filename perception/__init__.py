"""Camera perception: models, dataset collection, training, evaluation, inference stage."""
