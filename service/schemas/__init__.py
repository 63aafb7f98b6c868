"""The API's request and response shapes, by role (what openapi.yaml shows as schemas)."""
