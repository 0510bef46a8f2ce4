"""The battwin web dashboard: a small HTTP server with a single-page UI over the fleet/device API.

It reads only the API (:mod:`cloud.api.handler` — in process against DynamoDB, local or AWS, or a deployed
API Gateway over HTTPS) and edits device configuration through the device shadow (:mod:`.shadow_control`).
It never listens to the broker: what it shows is what the cloud stored.
"""
