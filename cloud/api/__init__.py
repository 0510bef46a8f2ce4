"""Fleet and device HTTP API (API Gateway proxy Lambda, usable in-process and by a local server)."""
