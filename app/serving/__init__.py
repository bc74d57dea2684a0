"""Feature reads off the worker: the serving processes (app/serving/process.py), the bulletin the
worker publishes its status in, and the supervisor that starts them and keeps the bulletin current."""
