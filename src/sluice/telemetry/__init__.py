"""What the gateway tells operators about requests: Prometheus metrics (``metrics``).

They read a request's record once it is finished; nothing here runs per chunk.
"""
