"""The Open Inference Protocol (v2, as KServe, Triton and MLServer speak it) beside v1.

`routes.v2` is the router; `codec` turns v2 requests (JSON, or JSON with the binary
tensor data extension) into arrays and results back into v2 responses.
"""

from service.api.v2.routes import v2, v2_health

__all__ = ["v2", "v2_health"]
