"""The Ray Serve host of the service (``python -m service --ray``; the ``ray`` extra).

One code path with two hosts: every replica runs the same ``create_app(settings)`` as the
single-process service, and a thin gateway routes each request to the deployment that does
that kind of work. Nothing here is imported by the default ``python -m service``.
"""
