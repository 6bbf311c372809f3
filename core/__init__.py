"""The bottom layer: the types, settings machinery, errors and metrics that ingest, memory and app share."""
