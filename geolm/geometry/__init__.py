"""Floor 2: token geometry: PPMI, SVD sphere coordinates, the PPMI graph and Dice curvature, Rodrigues transport."""
