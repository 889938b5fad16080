"""The HTTP server: LitServe API with dynamic batching, routes, validation, encoding, metrics and its CLI.

Start it with `ganserve serve MODEL_DIR` (see server.serve); talk to it with ganserve.client.
"""
