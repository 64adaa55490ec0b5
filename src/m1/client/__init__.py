"""m1's one client layer for OpenAI-compatible servers: `Client` (HTTP, retries, errors) and one
dialect object per server kind (`dialects`)."""
from m1.client.http import Client, Malformed, NoAnswer, Policy, RequestFailed, ServerDown, StatusError

__all__ = ["Client", "Malformed", "NoAnswer", "Policy", "RequestFailed", "ServerDown", "StatusError"]
