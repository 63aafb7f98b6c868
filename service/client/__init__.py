"""A client of the service's own API, and its command line (``python -m service.client``)."""

from service.client.api import Client, ServiceError

__all__ = ["Client", "ServiceError"]
