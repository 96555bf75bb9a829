"""`make bench`: throughput, latency and memory of the task agent, against a Celery baseline.

Nothing here imports third-party code at package import: `bench.celery_app` and
`bench.celery_driver` run in Celery's own virtualenv, which has none of Agentry's packages."""
