"""Spectrogram classifiers (`python -m training fit-classifier`): labelled clips and their
groups (`data`), the network, its training and export (`network`), and the evaluation,
leave-one-group-out included (`evaluate`)."""
