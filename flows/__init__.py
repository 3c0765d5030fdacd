"""Prefect flows: the DAG of sightsound_core stages, run locally or dispatched to work pools."""
