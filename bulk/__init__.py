"""Archive scoring on Ray: `python -m bulk score --model artifacts/NAME --in DIR --out X.parquet`.

Decoding, features and scoring are the service's own functions (service/inputs.py,
service/models/runtimes.py), so a file gets the score, level, windows and error code the HTTP
batch endpoint would give it. The service never imports this package.
"""
