"""Anomaly detectors: the autoencoder (`autoencoder`), PCA + Mahalanobis on its features
and the band statistics (`mahalanobis`), thresholds (`calibration`), the fit pipeline of
`python -m training fit` (`fit`) and the DCASE-style evaluation (`evaluate`)."""
