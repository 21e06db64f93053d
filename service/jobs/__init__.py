"""Fit jobs: the spool folder the service writes uploads to and a trainer takes them from.

The service never trains (no TensorFlow here): `POST /v1/fits` spools a job, a trainer
(`python -m training worker`) runs it and publishes the bundle, and the service loads it.
Job state lives in files of the job's folder, so every server process and the trainer
share it without a database.
"""
