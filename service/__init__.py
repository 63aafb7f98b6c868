"""celebxai service: serves a model bundle over HTTP (predictions; explanations plug in as routers).

``create_app`` (in ``service.app``) builds the FastAPI app; ``python -m service`` runs it.
"""

__version__ = "0.1.0"
