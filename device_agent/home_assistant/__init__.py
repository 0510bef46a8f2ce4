"""Optional output to Home Assistant: MQTT discovery, availability and states on a local broker.

``entities`` (the rows: what Home Assistant shows), ``discovery`` (topics and config payloads), ``connection``
(the local broker, awscrt, with the last will), ``publisher`` (queue and worker thread), ``bridge`` (the agent's
messages to states; :func:`attach_home_assistant`). Off by default; docs/home_assistant.md.
"""

from device_agent.home_assistant.bridge import HomeAssistantBridge, HomeAssistantConfigError, attach_home_assistant

__all__ = ["HomeAssistantBridge", "HomeAssistantConfigError", "attach_home_assistant"]
