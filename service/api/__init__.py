"""HTTP surface: the v1 routes (`v1`), their dependencies and upload handling, and the
Open Inference Protocol v2 (`v2`)."""
