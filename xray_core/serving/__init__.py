"""Serving explanations to a dashboard's many users, so that a verdict never waits for one.

`scheduler` keeps the jobs (who waits for what, in which order, and the finished results by
`JobKey`); `service` is the pool of worker processes behind it (`ExplainService`, and `shared`,
the server's one service); `worker` is the process loop of one worker, which answers with
`explain.explain_film`. The server process itself never imports TensorFlow, Keras or lime.
"""

from xray_core.serving.scheduler import JobKey, Scheduler, Status
from xray_core.serving.service import ExplainService

__all__ = ["ExplainService", "JobKey", "Scheduler", "Status"]
